//! Where the Kubernetes objects come from: a [`ObjectSource`] lists them
//! and watches them change; an [`ObjectStore`] is a source ferry can also
//! write (`ferryctl apply` / `delete`). Two stores: [`Embedded`] (the
//! single node's redb store, held by ferryd) and
//! [`super::etcd::EtcdObjects`] (cluster mode). A Kubernetes API watcher
//! would be a third source, read-only (ARCHITECTURE.md says how).
//!
//! The contract is etcd's: a listing has a revision; a watch from that
//! revision delivers every later change, in order, or says
//! [`WatchEvent::Resync`] (list again) when it cannot.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{broadcast, Mutex};

use super::objects::{Object, ObjectKey};
use crate::cluster::DsError;
use crate::store::Store;

/// Every object, as of `revision`.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub objects: Vec<Object>,
    pub revision: i64,
    /// Keys whose value is not an object ferry keeps, and why: reported,
    /// never used.
    pub unreadable: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Put(Object),
    Gone(ObjectKey),
}

#[derive(Debug, Clone)]
pub enum WatchEvent {
    Changes {
        changes: Vec<Change>,
        unreadable: Vec<(String, String)>,
    },
    /// Changes were lost (compaction, a lagging reader, a broken stream):
    /// list again.
    Resync(String),
}

#[async_trait]
pub trait ObjectWatch: Send {
    async fn next(&mut self) -> WatchEvent;
}

#[async_trait]
pub trait ObjectSource: Send + Sync {
    /// What it is, for logs and `ferryctl`.
    fn describe(&self) -> String;
    async fn list(&self) -> Result<Listing, DsError>;
    /// Every change after `revision` (a listing's).
    async fn watch(&self, revision: i64) -> Result<Box<dyn ObjectWatch>, DsError>;
}

#[async_trait]
pub trait ObjectStore: ObjectSource {
    /// Create or replace every object, all or none.
    async fn apply(&self, objects: &[Object]) -> Result<(), DsError>;
    /// Delete every key, all or none; returns the keys that were there.
    async fn delete(&self, keys: &[ObjectKey]) -> Result<Vec<ObjectKey>, DsError>;
}

/// An object from a store's `(key, JSON)`: the key must be the object's.
pub fn decode(path: &str, json: &str) -> Result<Object, String> {
    let obj = Object::from_json(json)?;
    let key = obj.key();
    if key.path() != path {
        return Err(format!("holds {key}, not the object of its key"));
    }
    Ok(obj)
}

/// Kept by every store: how many changes a watcher may lag behind before
/// it must list again.
const WATCH_BACKLOG: usize = 256;

/// The single node's objects, in ferryd's redb store. Only this ferryd
/// writes them, so its watch is a channel of the writes it made.
/// A write's revision and its changes, as watchers receive them.
type Revision = (i64, Vec<Change>);

pub struct Embedded {
    /// Weak: the agent owns the store; a follower task still running after
    /// it is dropped (a test's agent, or ferryd shutting down) must not
    /// keep the database open.
    store: std::sync::Weak<Store>,
    path: std::path::PathBuf,
    /// Revision of the last write (0 at start: every start lists first)
    /// and the channel its changes go out on. Writes and watch starts take
    /// the lock, so a watch starts exactly at a revision.
    state: Mutex<(i64, broadcast::Sender<Revision>)>,
}

/// A blocking store call, off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, DsError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| DsError::Refused(format!("embedded store: {e}"))),
        Err(e) => Err(DsError::Refused(format!("embedded store task: {e}"))),
    }
}

impl Embedded {
    pub fn new(store: Arc<Store>) -> Embedded {
        Embedded {
            path: store.path().to_path_buf(),
            store: Arc::downgrade(&store),
            state: Mutex::new((0, broadcast::channel(WATCH_BACKLOG).0)),
        }
    }

    fn store(&self) -> Result<Arc<Store>, DsError> {
        self.store
            .upgrade()
            .ok_or_else(|| DsError::Refused("embedded store: closed (ferryd is stopping)".into()))
    }

    /// One write and its broadcast, off the async workers.
    async fn write(
        self: &Embedded,
        puts: Vec<(String, String)>,
        deletes: Vec<String>,
        changes: impl FnOnce(&[bool]) -> Vec<Change>,
    ) -> Result<Vec<bool>, DsError> {
        let store = self.store()?;
        // The lock is held across the write so revisions follow commits.
        let mut state = self.state.lock().await;
        let existed = blocking(move || store.write_objects(&puts, &deletes)).await?;
        state.0 += 1;
        let rev = state.0;
        // No receiver: nobody watches yet, the next listing sees it.
        let _ = state.1.send((rev, changes(&existed)));
        Ok(existed)
    }
}

#[async_trait]
impl ObjectSource for Embedded {
    fn describe(&self) -> String {
        format!("embedded {}", self.path.display())
    }

    async fn list(&self) -> Result<Listing, DsError> {
        let state = self.state.lock().await;
        let store = self.store()?;
        let rows = blocking(move || store.objects()).await?;
        let mut listing = Listing {
            revision: state.0,
            ..Listing::default()
        };
        for (k, v) in rows {
            match decode(&k, &v) {
                Ok(o) => listing.objects.push(o),
                Err(why) => listing.unreadable.push((k, why)),
            }
        }
        Ok(listing)
    }

    async fn watch(&self, revision: i64) -> Result<Box<dyn ObjectWatch>, DsError> {
        let state = self.state.lock().await;
        Ok(Box::new(EmbeddedWatch {
            rx: state.1.subscribe(),
            next: revision + 1,
            behind: (state.0 != revision).then(|| {
                format!(
                    "asked to watch from revision {revision}, the store is at {}",
                    state.0
                )
            }),
        }))
    }
}

#[async_trait]
impl ObjectStore for Embedded {
    async fn apply(&self, objects: &[Object]) -> Result<(), DsError> {
        let puts = objects
            .iter()
            .map(|o| (o.key().path(), o.to_json()))
            .collect();
        let changes = objects.iter().cloned().map(Change::Put).collect();
        self.write(puts, Vec::new(), |_| changes).await?;
        Ok(())
    }

    async fn delete(&self, keys: &[ObjectKey]) -> Result<Vec<ObjectKey>, DsError> {
        let paths = keys.iter().map(ObjectKey::path).collect();
        let gone = |existed: &[bool]| -> Vec<ObjectKey> {
            keys.iter()
                .zip(existed)
                .filter(|(_, e)| **e)
                .map(|(k, _)| k.clone())
                .collect()
        };
        let existed = self
            .write(Vec::new(), paths, |e| {
                gone(e).into_iter().map(Change::Gone).collect()
            })
            .await?;
        Ok(gone(&existed))
    }
}

struct EmbeddedWatch {
    rx: broadcast::Receiver<Revision>,
    /// The revision the next event must have.
    next: i64,
    /// Set when the watch started late: its first event is a resync.
    behind: Option<String>,
}

#[async_trait]
impl ObjectWatch for EmbeddedWatch {
    async fn next(&mut self) -> WatchEvent {
        if let Some(why) = self.behind.take() {
            return WatchEvent::Resync(why);
        }
        match self.rx.recv().await {
            Ok((rev, changes)) if rev == self.next => {
                self.next += 1;
                WatchEvent::Changes {
                    changes,
                    unreadable: Vec::new(),
                }
            }
            Ok((rev, _)) => {
                WatchEvent::Resync(format!("revision {rev} arrived, {} expected", self.next))
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                WatchEvent::Resync(format!("the watch fell {n} changes behind"))
            }
            Err(broadcast::error::RecvError::Closed) => {
                WatchEvent::Resync("the store was closed".into())
            }
        }
    }
}
