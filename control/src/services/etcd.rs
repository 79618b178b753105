//! The objects in etcd (cluster mode): `<prefix>/objects/<resource>/<namespace>/<name>`
//! (a Namespace: `<prefix>/objects/namespaces/<name>`) -> the object's
//! Kubernetes JSON. Every node lists and watches the prefix; any node's
//! ferryd writes it (`ferryctl apply` goes through the local ferryd).
//! An apply or delete is one transaction (all or nothing), so at most
//! [`MAX_TXN_OPS`] objects per file (etcd's default `--max-txn-ops`).

use async_trait::async_trait;
use etcd_client::{Client, EventType, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse};

use super::objects::{Object, ObjectKey};
use super::source::{decode, Change, Listing, ObjectSource, ObjectStore, ObjectWatch, WatchEvent};
use crate::cluster::etcd::{bounded, client, next_message, watch_prefix, EtcdOptions};
use crate::cluster::DsError;

/// etcd's default limit of operations in one transaction.
pub const MAX_TXN_OPS: usize = 128;

pub struct EtcdObjects {
    client: Client,
    endpoints: Vec<String>,
    /// `<prefix>/objects/`.
    root: String,
}

impl EtcdObjects {
    /// A client for `cfg` (lazy: an unreachable etcd shows at the first call).
    pub async fn connect(cfg: &EtcdOptions) -> Result<EtcdObjects, DsError> {
        Ok(EtcdObjects {
            client: client(cfg).await?,
            endpoints: cfg.endpoints.clone(),
            root: format!("{}/objects/", cfg.prefix),
        })
    }

    fn key(&self, k: &ObjectKey) -> String {
        format!("{}{}", self.root, k.path())
    }

    fn path_of<'a>(&self, kv: &'a KeyValue) -> Option<&'a str> {
        std::str::from_utf8(kv.key()).ok()?.strip_prefix(&self.root)
    }

    /// The object of a key-value, or (key, why not).
    fn object_of(&self, kv: &KeyValue) -> Result<Object, (String, String)> {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let Some(path) = self.path_of(kv) else {
            return Err((key, "not an object key".into()));
        };
        let json = std::str::from_utf8(kv.value()).map_err(|e| (key.clone(), e.to_string()))?;
        decode(path, json).map_err(|why| (key, why))
    }

    async fn txn(&self, what: &str, ops: Vec<TxnOp>) -> Result<Vec<TxnOpResponse>, DsError> {
        if ops.len() > MAX_TXN_OPS {
            return Err(DsError::Refused(format!(
                "{} objects in one file; etcd takes at most {MAX_TXN_OPS} in one transaction (split the file)",
                ops.len()
            )));
        }
        let mut c = self.client.clone();
        let resp = bounded(what, c.txn(Txn::new().and_then(ops))).await?;
        Ok(resp.op_responses())
    }
}

#[async_trait]
impl ObjectSource for EtcdObjects {
    fn describe(&self) -> String {
        format!("etcd {} ({})", self.endpoints.join(","), self.root)
    }

    async fn list(&self) -> Result<Listing, DsError> {
        let mut c = self.client.clone();
        let resp = bounded(
            "list objects",
            c.get(self.root.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let mut listing = Listing {
            revision: resp.header().map_or(0, |h| h.revision()),
            ..Listing::default()
        };
        for kv in resp.kvs() {
            match self.object_of(kv) {
                Ok(o) => listing.objects.push(o),
                Err(u) => listing.unreadable.push(u),
            }
        }
        Ok(listing)
    }

    async fn watch(&self, revision: i64) -> Result<Box<dyn ObjectWatch>, DsError> {
        let stream =
            watch_prefix(&self.client, "watch objects", self.root.clone(), revision).await?;
        Ok(Box::new(EtcdObjectWatch {
            stream,
            root: self.root.clone(),
        }))
    }
}

#[async_trait]
impl ObjectStore for EtcdObjects {
    async fn apply(&self, objects: &[Object]) -> Result<(), DsError> {
        let ops = objects
            .iter()
            .map(|o| TxnOp::put(self.key(&o.key()), o.to_json(), None))
            .collect();
        self.txn("apply objects", ops).await?;
        Ok(())
    }

    async fn delete(&self, keys: &[ObjectKey]) -> Result<Vec<ObjectKey>, DsError> {
        let ops = keys
            .iter()
            .map(|k| TxnOp::delete(self.key(k), None))
            .collect();
        let resps = self.txn("delete objects", ops).await?;
        Ok(keys
            .iter()
            .zip(resps)
            .filter(|(_, r)| matches!(r, TxnOpResponse::Delete(d) if d.deleted() > 0))
            .map(|(k, _)| k.clone())
            .collect())
    }
}

struct EtcdObjectWatch {
    stream: etcd_client::WatchStream,
    root: String,
}

#[async_trait]
impl ObjectWatch for EtcdObjectWatch {
    async fn next(&mut self) -> WatchEvent {
        loop {
            let msg = match next_message(&mut self.stream).await {
                Ok(m) => m,
                Err(why) => return WatchEvent::Resync(why),
            };
            let mut changes = Vec::new();
            let mut unreadable = Vec::new();
            for ev in msg.events() {
                let Some(kv) = ev.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let Some(okey) = key.strip_prefix(&self.root).and_then(ObjectKey::from_path) else {
                    unreadable.push((key, "not an object key".into()));
                    continue;
                };
                match ev.event_type() {
                    EventType::Put => {
                        let json = String::from_utf8_lossy(kv.value());
                        match decode(&okey.path(), &json) {
                            Ok(o) => changes.push(Change::Put(o)),
                            Err(why) => {
                                // Overwritten with garbage: no longer an object.
                                changes.push(Change::Gone(okey));
                                unreadable.push((key, why));
                            }
                        }
                    }
                    EventType::Delete => changes.push(Change::Gone(okey)),
                }
            }
            if changes.is_empty() && unreadable.is_empty() {
                // Created or progress notification: nothing changed.
                continue;
            }
            return WatchEvent::Changes {
                changes,
                unreadable,
            };
        }
    }
}
