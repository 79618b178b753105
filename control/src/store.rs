//! The crash-safe state of ferryd: a redb database in `state_dir`.
//!
//! Tables:
//! - `attachments`: (network, container id, ifname) -> [`Record`] (JSON)
//! - `allocations`: IPv4 address (u32) -> the attachment holding it (JSON)
//! - `cursors`: network -> last address allocated (host-local style)
//!
//! Invariants, each kept by doing the change in one write transaction:
//! - every record's address is in `allocations` pointing back at it, and
//!   every allocation has its record ([`Store::allocate_pending`],
//!   [`Store::release`]);
//! - an address is committed as allocated before anything uses it, so a
//!   crash never hands it out twice; a record stays `pending` until the
//!   attachment is plumbed and acknowledged, and [`Store::pending`] lists
//!   what a restart must roll back.
//!
//! redb serializes write transactions, which is what makes concurrent ADDs
//! safe. All calls block (fsync on commit): async callers use
//! `spawn_blocking`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ferry_api::pod::{AttachmentKey, PodResult};
use ferry_api::MacAddr;
use ipnet::Ipv4Net;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::ipam::{Pool, Pools};

const ATTACHMENTS: TableDefinition<(&str, &str, &str), &str> = TableDefinition::new("attachments");
const ALLOCATIONS: TableDefinition<u32, &str> = TableDefinition::new("allocations");
const CURSORS: TableDefinition<&str, u32> = TableDefinition::new("cursors");

/// Key of an attachment: one interface of one container on one network.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttachmentId {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

impl AttachmentId {
    pub fn new(network: &str, container_id: &str, ifname: &str) -> Self {
        AttachmentId {
            network: network.into(),
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }

    /// The endpoint id used in the table API: `<container id>/<ifname>`.
    pub fn endpoint_id(&self) -> String {
        format!("{}/{}", self.container_id, self.ifname)
    }

    pub fn attachment_key(&self) -> AttachmentKey {
        AttachmentKey {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }

    fn key(&self) -> (&str, &str, &str) {
        (&self.network, &self.container_id, &self.ifname)
    }
}

impl std::fmt::Display for AttachmentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}/{}", self.network, self.container_id, self.ifname)
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Allocated, plumbing or dataplane ack not finished: rolled back at start.
    Pending,
    /// Plumbed and acknowledged by the dataplane.
    Ready,
}

/// Everything ferryd knows about one attachment.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: AttachmentId,
    pub ip: Ipv4Addr,
    /// Address with the prefix of its pool, as configured in the pod.
    pub address: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub host_ifname: String,
    pub mac: MacAddr,
    pub netns: String,
    /// The namespace `netns` named at ADD (absent in records from before
    /// this field: those are checked by path only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_id: Option<ferry_api::table::NetnsId>,
    pub mtu: u32,
    /// veth (records from before this field existed) or tap.
    #[serde(default)]
    pub attachment: ferry_api::table::Attachment,
    pub state: State,
    /// What ADD answered (and answers again when repeated).
    pub result: PodResult,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("create state directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("open database {path}: {source}")]
    Open {
        path: PathBuf,
        source: Box<redb::DatabaseError>,
    },
    #[error("database: {0}")]
    Db(Box<redb::Error>),
    #[error("corrupt record under {key}: {source}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(Box::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Why an allocation failed.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error("no free address left in {pools}")]
    Exhausted { pools: String },
    #[error("requested address {ip} is not available: {why}")]
    Unavailable { ip: Ipv4Addr, why: String },
    #[error("{id} already has a record (address {ip})")]
    AlreadyExists { id: AttachmentId, ip: Ipv4Addr },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn describe(pools: &Pools) -> String {
    pools
        .0
        .iter()
        .map(|p| format!("{} ({}-{})", p.subnet, p.first, p.last))
        .collect::<Vec<_>>()
        .join(", ")
}

pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Open (or create) `<dir>/ferry.redb`, creating `dir` if needed.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("ferry.redb");
        let db = Database::create(&path).map_err(|e| StoreError::Open {
            path: path.clone(),
            source: Box::new(e),
        })?;
        // Create the tables so read transactions always find them.
        let txn = db.begin_write()?;
        txn.open_table(ATTACHMENTS)?;
        txn.open_table(ALLOCATIONS)?;
        txn.open_table(CURSORS)?;
        txn.commit()?;
        Ok(Store { db, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, id: &AttachmentId) -> Result<Option<Record>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ATTACHMENTS)?;
        match table.get(id.key())? {
            Some(v) => Ok(Some(decode(&id.to_string(), v.value())?)),
            None => Ok(None),
        }
    }

    /// Every record, in key order.
    pub fn records(&self) -> Result<Vec<Record>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ATTACHMENTS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            let (n, c, i) = k.value();
            out.push(decode(&format!("{n}:{c}/{i}"), v.value())?);
        }
        Ok(out)
    }

    pub fn pending(&self) -> Result<Vec<Record>, StoreError> {
        Ok(self
            .records()?
            .into_iter()
            .filter(|r| r.state == State::Pending)
            .collect())
    }

    pub fn ready(&self) -> Result<Vec<Record>, StoreError> {
        Ok(self
            .records()?
            .into_iter()
            .filter(|r| r.state == State::Ready)
            .collect())
    }

    /// Number of allocated addresses that `pools` could hand out.
    pub fn allocated_in(&self, pools: &Pools) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ALLOCATIONS)?;
        let mut n = 0;
        for item in table.iter()? {
            let (k, _) = item?;
            if pools.pool_of(Ipv4Addr::from(k.value())).is_some() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// In one write transaction: choose an address (`requested`, or the
    /// next free one after the network's cursor), record the allocation,
    /// and store the record `make` builds from the pool and address, as
    /// `pending`. Fails if `id` already has a record.
    pub fn allocate_pending(
        &self,
        id: &AttachmentId,
        pools: &Pools,
        requested: Option<Ipv4Addr>,
        make: impl FnOnce(&Pool, Ipv4Addr) -> Record,
    ) -> Result<Record, AllocError> {
        let txn = self.db.begin_write().map_err(StoreError::from)?;
        let record = {
            let mut attachments = txn.open_table(ATTACHMENTS).map_err(StoreError::from)?;
            let mut allocations = txn.open_table(ALLOCATIONS).map_err(StoreError::from)?;
            let mut cursors = txn.open_table(CURSORS).map_err(StoreError::from)?;
            if let Some(existing) = attachments.get(id.key()).map_err(StoreError::from)? {
                let rec = decode(&id.to_string(), existing.value())?;
                return Err(AllocError::AlreadyExists {
                    id: id.clone(),
                    ip: rec.ip,
                });
            }
            let (pool, ip) = match requested {
                Some(ip) => {
                    let Some(pool) = pools.pool_of(ip) else {
                        return Err(AllocError::Unavailable {
                            ip,
                            why: format!("not inside the allocatable ranges {}", describe(pools)),
                        });
                    };
                    if let Some(holder) =
                        allocations.get(u32::from(ip)).map_err(StoreError::from)?
                    {
                        return Err(AllocError::Unavailable {
                            ip,
                            why: format!("already allocated to {}", holder.value()),
                        });
                    }
                    (pool, ip)
                }
                None => {
                    let cursor = cursors
                        .get(id.network.as_str())
                        .map_err(StoreError::from)?
                        .map(|v| Ipv4Addr::from(v.value()));
                    let picked = pools.pick(cursor, |a| {
                        allocations
                            .get(u32::from(a))
                            .map(|v| v.is_some())
                            .map_err(StoreError::from)
                    })?;
                    let Some((idx, ip)) = picked else {
                        return Err(AllocError::Exhausted {
                            pools: describe(pools),
                        });
                    };
                    cursors
                        .insert(id.network.as_str(), u32::from(ip))
                        .map_err(StoreError::from)?;
                    (&pools.0[idx], ip)
                }
            };
            let mut record = make(pool, ip);
            record.state = State::Pending;
            let holder = serde_json::to_string(&id).map_err(|e| StoreError::Corrupt {
                key: id.to_string(),
                source: e,
            })?;
            allocations
                .insert(u32::from(ip), holder.as_str())
                .map_err(StoreError::from)?;
            let value = encode(&record)?;
            attachments
                .insert(id.key(), value.as_str())
                .map_err(StoreError::from)?;
            record
        };
        txn.commit().map_err(StoreError::from)?;
        Ok(record)
    }

    /// Change the state of an existing record; false if there is none.
    pub fn set_state(&self, id: &AttachmentId, state: State) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        let found = {
            let mut attachments = txn.open_table(ATTACHMENTS)?;
            let current = attachments.get(id.key())?.map(|v| v.value().to_string());
            match current {
                Some(text) => {
                    let mut rec = decode(&id.to_string(), &text)?;
                    rec.state = state;
                    let value = encode(&rec)?;
                    attachments.insert(id.key(), value.as_str())?;
                    true
                }
                None => false,
            }
        };
        txn.commit()?;
        Ok(found)
    }

    /// Delete the record of `id` and free its address, in one transaction.
    /// Returns the record that was removed (None: nothing to do).
    pub fn release(&self, id: &AttachmentId) -> Result<Option<Record>, StoreError> {
        let txn = self.db.begin_write()?;
        let removed = {
            let mut attachments = txn.open_table(ATTACHMENTS)?;
            let mut allocations = txn.open_table(ALLOCATIONS)?;
            let text = attachments.remove(id.key())?.map(|v| v.value().to_string());
            match text {
                None => None,
                Some(text) => {
                    // A record that no longer decodes still loses its key;
                    // its address is then found through the allocation table.
                    let rec = decode(&id.to_string(), &text).ok();
                    let holder = serde_json::to_string(&id).unwrap_or_default();
                    let mut stale = Vec::new();
                    for item in allocations.iter()? {
                        let (k, v) = item?;
                        if v.value() == holder {
                            stale.push(k.value());
                        }
                    }
                    for ip in stale {
                        allocations.remove(ip)?;
                    }
                    rec
                }
            }
        };
        txn.commit()?;
        Ok(removed)
    }

    /// Who holds `ip`, if anyone.
    pub fn holder_of(&self, ip: Ipv4Addr) -> Result<Option<AttachmentId>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ALLOCATIONS)?;
        match table.get(u32::from(ip))? {
            Some(v) => {
                let text = v.value();
                serde_json::from_str(text)
                    .map(Some)
                    .map_err(|source| StoreError::Corrupt {
                        key: ip.to_string(),
                        source,
                    })
            }
            None => Ok(None),
        }
    }
}

fn decode(key: &str, text: &str) -> Result<Record, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::Corrupt {
        key: key.to_string(),
        source,
    })
}

fn encode(rec: &Record) -> Result<String, StoreError> {
    serde_json::to_string(rec).map_err(|source| StoreError::Corrupt {
        key: rec.id.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use ferry_api::pod::IpamRequest;

    use super::*;

    pub(crate) struct TempDir(pub PathBuf);
    impl TempDir {
        pub fn new(tag: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!("fyd-store-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn pools(cidr: &str) -> Pools {
        let cidr: Ipv4Net = cidr.parse().unwrap();
        Pools::for_request(
            &IpamRequest::default(),
            &[cidr],
            crate::config::first_host(cidr),
        )
        .unwrap()
    }

    fn make(id: &AttachmentId) -> impl FnOnce(&Pool, Ipv4Addr) -> Record + '_ {
        move |pool, ip| Record {
            id: id.clone(),
            ip,
            address: Ipv4Net::new(ip, pool.prefix_len()).unwrap(),
            gateway: pool.gateway,
            host_ifname: "fyx".into(),
            mac: MacAddr::for_pod(ip),
            netns: "/run/netns/x".into(),
            netns_id: None,
            mtu: 1500,
            attachment: Default::default(),
            state: State::Ready, // overwritten to Pending by the store
            result: PodResult {
                interfaces: vec![],
                ips: vec![],
                routes: vec![],
            },
        }
    }

    #[test]
    fn allocate_release_and_cursor() {
        let dir = TempDir::new("basic");
        let store = Store::open(&dir.0).unwrap();
        let p = pools("10.88.0.0/29");
        let a = AttachmentId::new("n", "a", "eth0");
        let b = AttachmentId::new("n", "b", "eth0");
        let ra = store.allocate_pending(&a, &p, None, make(&a)).unwrap();
        assert_eq!(ra.ip, "10.88.0.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(ra.state, State::Pending);
        assert_eq!(store.holder_of(ra.ip).unwrap(), Some(a.clone()));
        // Same key again is refused.
        assert!(matches!(
            store.allocate_pending(&a, &p, None, make(&a)),
            Err(AllocError::AlreadyExists { .. })
        ));
        // Released address is not reused at once (cursor).
        assert_eq!(store.release(&a).unwrap().map(|r| r.ip), Some(ra.ip));
        assert_eq!(store.holder_of(ra.ip).unwrap(), None);
        assert_eq!(store.release(&a).unwrap(), None, "release is idempotent");
        let rb = store.allocate_pending(&b, &p, None, make(&b)).unwrap();
        assert_eq!(rb.ip, "10.88.0.3".parse::<Ipv4Addr>().unwrap());
        assert!(store.set_state(&b, State::Ready).unwrap());
        assert!(!store.set_state(&a, State::Ready).unwrap());
        assert_eq!(store.get(&b).unwrap().unwrap().state, State::Ready);
        assert_eq!(store.allocated_in(&p).unwrap(), 1);
    }

    #[test]
    fn explicit_requests_and_exhaustion() {
        let dir = TempDir::new("explicit");
        let store = Store::open(&dir.0).unwrap();
        let p = pools("10.88.0.0/30"); // only .2 is allocatable
        let a = AttachmentId::new("n", "a", "eth0");
        let b = AttachmentId::new("n", "b", "eth0");
        let two: Ipv4Addr = "10.88.0.2".parse().unwrap();
        for bad in ["10.88.0.1", "10.88.0.3", "10.99.0.2"] {
            let e = store
                .allocate_pending(&a, &p, Some(bad.parse().unwrap()), make(&a))
                .unwrap_err();
            assert!(matches!(e, AllocError::Unavailable { .. }), "{bad}: {e}");
        }
        assert_eq!(
            store
                .allocate_pending(&a, &p, Some(two), make(&a))
                .unwrap()
                .ip,
            two
        );
        let e = store
            .allocate_pending(&b, &p, Some(two), make(&b))
            .unwrap_err();
        assert!(matches!(e, AllocError::Unavailable { .. }), "{e}");
        assert!(e.to_string().contains("already allocated"), "{e}");
        let e = store.allocate_pending(&b, &p, None, make(&b)).unwrap_err();
        assert!(matches!(e, AllocError::Exhausted { .. }), "{e}");
        assert!(
            store.get(&b).unwrap().is_none(),
            "a failed allocation leaves no record"
        );
    }

    #[test]
    fn reopen_keeps_records_and_lists_pending() {
        let dir = TempDir::new("reopen");
        let p = pools("10.88.0.0/24");
        let a = AttachmentId::new("n", "a", "eth0");
        let b = AttachmentId::new("n", "b", "eth0");
        {
            let store = Store::open(&dir.0).unwrap();
            store.allocate_pending(&a, &p, None, make(&a)).unwrap();
            store.set_state(&a, State::Ready).unwrap();
            store.allocate_pending(&b, &p, None, make(&b)).unwrap();
        }
        let store = Store::open(&dir.0).unwrap();
        let ready = store.ready().unwrap();
        let pending = store.pending().unwrap();
        assert_eq!(ready.iter().map(|r| &r.id).collect::<Vec<_>>(), vec![&a]);
        assert_eq!(pending.iter().map(|r| &r.id).collect::<Vec<_>>(), vec![&b]);
        // Rolling the pending one back frees its address; the ready one stays.
        let rolled = store.release(&b).unwrap().unwrap();
        assert_eq!(store.holder_of(rolled.ip).unwrap(), None);
        drop(store);
        let store = Store::open(&dir.0).unwrap();
        assert!(store.pending().unwrap().is_empty());
        assert_eq!(store.ready().unwrap().len(), 1);
        assert_eq!(store.holder_of(ready[0].ip).unwrap(), Some(a));
    }

    #[test]
    fn fifty_threads_get_fifty_distinct_addresses() {
        let dir = TempDir::new("threads");
        let store = Arc::new(Store::open(&dir.0).unwrap());
        let p = Arc::new(pools("10.88.0.0/26")); // 61 allocatable
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let store = Arc::clone(&store);
                let p = Arc::clone(&p);
                std::thread::spawn(move || {
                    let id = AttachmentId::new("n", &format!("c{i}"), "eth0");
                    store.allocate_pending(&id, &p, None, make(&id)).unwrap().ip
                })
            })
            .collect();
        let ips: Vec<Ipv4Addr> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let unique: BTreeSet<_> = ips.iter().collect();
        assert_eq!(unique.len(), 50, "{ips:?}");
        assert_eq!(store.records().unwrap().len(), 50);
        assert_eq!(store.allocated_in(&p).unwrap(), 50);
    }
}
