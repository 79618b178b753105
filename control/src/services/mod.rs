//! Kubernetes Services for the dataplane: the objects ([`objects`]), where
//! they are kept ([`source`]: the embedded store, [`etcd`]), and the
//! service ports compiled from them ([`compile`]), kept current by
//! [`Services`].
//!
//! [`Services`] follows its source as the cluster member follows its
//! datastore: list, then watch from the listing's revision; every change
//! recompiles the service ports (a pure function of all Services and
//! EndpointSlices, cheap next to a round trip), and what differs from the
//! last set goes to the dataplane as `UpsertService` / `RemoveService`.
//! The set is updated before it is sent, so a dataplane that (re)connects
//! in between gets it in the `SyncServices` that follows its `Sync`
//! ([`Services::ports`], read by the sync hook). A failed source keeps the
//! ports as they are (traffic goes on) and is listed again after a backoff.

pub mod compile;
pub mod etcd;
pub mod objects;
pub mod policy;
pub mod source;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ferry_api::objects::{ObjectListing, ObjectRef, ObjectsRequest, ObjectsResponse};
use ferry_api::table::ServicePort;

use crate::cluster::member::follow_forever;
use crate::cluster::DsError;
use crate::dataplane_client::{DataplaneClient, REPLY_TIMEOUT};
use compile::Compiled;
use objects::{Object, ObjectKey};
use source::{Change, ObjectStore, WatchEvent};

#[derive(Default)]
struct Inner {
    objects: BTreeMap<ObjectKey, Object>,
    compiled: Compiled,
    /// Why the source failed last, while it does.
    error: Option<String>,
}

pub struct Services {
    store: Arc<dyn ObjectStore>,
    seed: u64,
    rule: compile::ClusterIpRule,
    inner: Mutex<Inner>,
    /// The follower task ([`Services::spawn`]), stopped by [`Services::stop`].
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a dataplane holding `old` must be told to hold `new` (both by id).
pub fn diff(old: &[ServicePort], new: &[ServicePort]) -> (Vec<ServicePort>, Vec<String>) {
    let before: BTreeMap<&str, &ServicePort> = old.iter().map(|p| (p.id.as_str(), p)).collect();
    let after: BTreeMap<&str, &ServicePort> = new.iter().map(|p| (p.id.as_str(), p)).collect();
    let upserts = new
        .iter()
        .filter(|p| before.get(p.id.as_str()) != Some(p))
        .cloned()
        .collect();
    let removes = old
        .iter()
        .filter(|p| !after.contains_key(p.id.as_str()))
        .map(|p| p.id.clone())
        .collect();
    (upserts, removes)
}

fn reference(k: &ObjectKey) -> ObjectRef {
    ObjectRef {
        kind: k.kind.name().to_string(),
        namespace: k.namespace.clone(),
        name: k.name.clone(),
    }
}

impl Services {
    /// Services of `store`'s objects, Maglev `seed` on every port. Lists
    /// once (bounded by the store's own call bounds) so the dataplane's
    /// first sync carries the services; a store that does not answer now
    /// starts empty and is listed again by the task.
    pub async fn start(
        store: Arc<dyn ObjectStore>,
        seed: u64,
        rule: compile::ClusterIpRule,
    ) -> Arc<Services> {
        let s = Arc::new(Services {
            store,
            seed,
            rule,
            inner: Mutex::new(Inner::default()),
            task: Mutex::new(None),
        });
        match s.store.list().await {
            Ok(l) => {
                for (key, why) in &l.unreadable {
                    log::warn!("object {key} ignored: {why}");
                }
                let n = l.objects.len();
                s.replace(l.objects);
                let ports = s.ports().len();
                log::info!(
                    "services: {n} object(s) in {}, {ports} service port(s)",
                    s.store.describe()
                );
            }
            Err(e) => s.set_error(Some(&e)),
        }
        s
    }

    /// The service ports the dataplane must hold.
    pub fn ports(&self) -> Vec<ServicePort> {
        lock(&self.inner).compiled.ports.clone()
    }

    fn set_error(&self, e: Option<&DsError>) {
        let mut i = lock(&self.inner);
        let text = e.map(ToString::to_string);
        if text.is_some() && i.error != text {
            log::error!(
                "services: {}: {}",
                self.store.describe(),
                text.as_deref().unwrap_or_default()
            );
        }
        i.error = text;
    }

    fn recompile(&self, i: &mut Inner) -> (Vec<ServicePort>, Vec<String>) {
        let services = i.objects.values().filter_map(|o| match o {
            Object::Service(s) => Some(&**s),
            _ => None,
        });
        let slices = i.objects.values().filter_map(|o| match o {
            Object::EndpointSlice(s) => Some(&**s),
            _ => None,
        });
        let new = compile::compile(services, slices, self.seed).admit(&self.rule);
        for why in new
            .skipped
            .iter()
            .filter(|w| !i.compiled.skipped.contains(w))
        {
            log::warn!("service left out: {why}");
        }
        let d = diff(&i.compiled.ports, &new.ports);
        i.compiled = new;
        d
    }

    /// Every object replaced by a listing's; returns what changed.
    fn replace(&self, objects: Vec<Object>) -> (Vec<ServicePort>, Vec<String>) {
        let mut i = lock(&self.inner);
        i.objects = objects.into_iter().map(|o| (o.key(), o)).collect();
        self.recompile(&mut i)
    }

    fn apply(&self, changes: Vec<Change>) -> (Vec<ServicePort>, Vec<String>) {
        let mut i = lock(&self.inner);
        for c in changes {
            match c {
                Change::Put(o) => {
                    i.objects.insert(o.key(), o);
                }
                Change::Gone(k) => {
                    i.objects.remove(&k);
                }
            }
        }
        self.recompile(&mut i)
    }

    /// Start the task following the source, pushing changes to `dp`.
    pub fn spawn(self: &Arc<Self>, dp: DataplaneClient) {
        let me = Arc::clone(self);
        let task = tokio::spawn(async move { me.run(dp).await });
        let old = self
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(task.abort_handle());
        if let Some(old) = old {
            old.abort();
        }
    }

    /// Stop the follower task (the agent is going away): it holds a
    /// dataplane client and the store, which must close with the agent.
    pub fn stop(&self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
    }

    async fn run(&self, dp: DataplaneClient) {
        follow_forever(
            &format!("services: {}", self.store.describe()),
            || self.follow(&dp),
            |e| self.set_error(Some(e)),
        )
        .await
    }

    /// A listing, then the watch until it says to list again (`Ok(why)`)
    /// or fails.
    async fn follow(&self, dp: &DataplaneClient) -> Result<String, DsError> {
        let listing = self.store.list().await?;
        self.set_error(None);
        for (key, why) in &listing.unreadable {
            log::warn!("object {key} ignored: {why}");
        }
        let revision = listing.revision;
        let d = self.replace(listing.objects);
        push(dp, d).await;
        let mut watch = self.store.watch(revision).await?;
        loop {
            match watch.next().await {
                WatchEvent::Resync(why) => return Ok(why),
                WatchEvent::Changes {
                    changes,
                    unreadable,
                } => {
                    for (key, why) in &unreadable {
                        log::warn!("object {key} ignored: {why}");
                    }
                    let d = self.apply(changes);
                    push(dp, d).await;
                }
            }
        }
    }

    /// One `ferryctl` request; `dataplane` says whether the dataplane
    /// holds the service ports ([`dataplane_state`]).
    pub async fn handle(&self, req: ObjectsRequest, dataplane: String) -> ObjectsResponse {
        let r = match req {
            ObjectsRequest::Apply { file, text } => self.apply_file(&file, &text).await,
            ObjectsRequest::Delete { file, text } => self.delete_file(&file, &text).await,
            ObjectsRequest::Get => Ok(self.listing(dataplane)),
        };
        r.unwrap_or_else(|msg| {
            log::warn!("objects: {msg}");
            ObjectsResponse::Error { msg }
        })
    }

    async fn apply_file(&self, file: &str, text: &str) -> Result<ObjectsResponse, String> {
        let objs = objects::parse_file(file, text).map_err(|e| e.to_string())?;
        self.store
            .apply(&objs)
            .await
            .map_err(|e| format!("{file}: nothing stored: {e}"))?;
        let refs: Vec<ObjectRef> = objs.iter().map(|o| reference(&o.key())).collect();
        log::info!("{file}: applied {} object(s)", refs.len());
        Ok(ObjectsResponse::Applied { objects: refs })
    }

    async fn delete_file(&self, file: &str, text: &str) -> Result<ObjectsResponse, String> {
        let keys: Vec<ObjectKey> = objects::parse_file(file, text)
            .map_err(|e| e.to_string())?
            .iter()
            .map(Object::key)
            .collect();
        let gone = self
            .store
            .delete(&keys)
            .await
            .map_err(|e| format!("{file}: nothing deleted: {e}"))?;
        log::info!("{file}: deleted {} object(s)", gone.len());
        Ok(ObjectsResponse::Deleted {
            objects: gone.iter().map(reference).collect(),
            missing: keys
                .iter()
                .filter(|k| !gone.contains(k))
                .map(reference)
                .collect(),
        })
    }

    fn listing(&self, dataplane: String) -> ObjectsResponse {
        let i = lock(&self.inner);
        ObjectsResponse::Listing(Box::new(ObjectListing {
            source: self.store.describe(),
            source_error: i.error.clone(),
            objects: i.objects.keys().map(reference).collect(),
            services: i.compiled.ports.clone(),
            skipped: i.compiled.skipped.clone(),
            dataplane,
            policies: Vec::new(),
            policy_skipped: Vec::new(),
            policy_dataplane: String::new(),
        }))
    }
}

/// `synced`, `not connected`, or what the dataplane answered.
pub fn dataplane_state(dp: &DataplaneClient) -> String {
    match (dp.connected(), dp.services_problem()) {
        (false, _) => "not connected".to_string(),
        (true, None) => "synced".to_string(),
        (true, Some(p)) => p,
    }
}

/// Hand service changes to the dataplane. Not connected (or refused): the
/// next sync carries [`Services::ports`] anyway.
async fn push(dp: &DataplaneClient, (upserts, removes): (Vec<ServicePort>, Vec<String>)) {
    for id in removes {
        match dp.remove_service(&id, REPLY_TIMEOUT).await {
            Ok(g) => log::info!("service {id} removed (generation {g})"),
            Err(e) => log::info!("service {id} removed: not in the dataplane yet ({e})"),
        }
    }
    for p in upserts {
        let what = format!(
            "service {} {}:{} -> {} backend(s)",
            p.id,
            p.vip,
            p.port,
            p.backends.len()
        );
        match dp.upsert_service(p, REPLY_TIMEOUT).await {
            Ok(g) => log::info!("{what} (generation {g})"),
            Err(e) => {
                log::info!("{what}: not in the dataplane yet ({e}); the next sync carries it")
            }
        }
    }
}

#[cfg(test)]
mod tests;
