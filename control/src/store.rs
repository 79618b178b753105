//! The crash-safe state of ferryd: a redb database in `state_dir`.
//!
//! Tables:
//! - `attachments`: (network, container id, ifname) -> [`Record`] (JSON)
//! - `addresses`: an address as text, either family -> the attachment
//!   holding it (JSON)
//! - `address_cursors`: (network, family 4 or 6) -> last address allocated
//!   there, as text (host-local style)
//! - `objects`: Kubernetes objects of the embedded single node (Services,
//!   EndpointSlices, ...; `ferryctl apply`), `<resource>/<namespace>/<name>`
//!   -> the object's JSON; this module knows nothing of their shape
//!   ([`crate::services`] does)
//!
//! Stores written before IPv6 kept IPv4 addresses as `u32` in
//! `allocations` and `cursors` (network -> u32); [`Store::open`] moves them
//! into the tables above in one transaction, so an upgrade keeps every
//! allocation.
//!
//! Invariants, each kept by doing the change in one write transaction:
//! - every record's addresses (one per family) are in `addresses`
//!   pointing back at it, and every allocation has its record
//!   ([`Store::allocate_pending`], [`Store::release`]); an allocation of
//!   several families is all or nothing;
//! - an address is committed as allocated before anything uses it, so a
//!   crash never hands it out twice; a record stays `pending` until the
//!   attachment is plumbed and acknowledged, and [`Store::pending`] lists
//!   what a restart must roll back.
//!
//! redb serializes write transactions, which is what makes concurrent ADDs
//! safe. All calls block (fsync on commit): async callers use
//! `spawn_blocking`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use ferry_api::pod::{AttachmentKey, PodResult};
use ferry_api::MacAddr;
use ipnet::Ipv4Net;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

pub use crate::ipam::PodAddress;
use crate::ipam::{Pool, PoolSets};

const ATTACHMENTS: TableDefinition<(&str, &str, &str), &str> = TableDefinition::new("attachments");
const ADDRESSES: TableDefinition<&str, &str> = TableDefinition::new("addresses");
const CURSORS: TableDefinition<(&str, u8), &str> = TableDefinition::new("address_cursors");
const OBJECTS: TableDefinition<&str, &str> = TableDefinition::new("objects");
/// Before IPv6: IPv4 allocations and cursors as `u32`, moved at open.
const LEGACY_ALLOCATIONS: TableDefinition<u32, &str> = TableDefinition::new("allocations");
const LEGACY_CURSORS: TableDefinition<&str, u32> = TableDefinition::new("cursors");

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

/// The addresses of an attachment, one per family, IPv4 first. Records
/// written before IPv6 carry their one IPv4 address as top-level
/// `address` and `gateway` (and `ip`): they read as a list of one.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(from = "AddressesOnDisk")]
pub struct Addresses {
    pub addresses: Vec<PodAddress>,
}

#[derive(Deserialize)]
struct AddressesOnDisk {
    #[serde(default)]
    addresses: Vec<PodAddress>,
    address: Option<Ipv4Net>,
    gateway: Option<Ipv4Addr>,
}

impl From<AddressesOnDisk> for Addresses {
    fn from(d: AddressesOnDisk) -> Addresses {
        let legacy = match (d.address, d.gateway) {
            (Some(a), Some(g)) if d.addresses.is_empty() => Some(PodAddress {
                address: a.into(),
                gateway: g.into(),
            }),
            _ => None,
        };
        Addresses {
            addresses: d.addresses.into_iter().chain(legacy).collect(),
        }
    }
}

impl std::fmt::Display for Addresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, a) in self.addresses.iter().enumerate() {
            write!(f, "{}{}", if i == 0 { "" } else { ", " }, a.address)?;
        }
        Ok(())
    }
}

/// Everything ferryd knows about one attachment.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: AttachmentId,
    #[serde(flatten)]
    pub addrs: Addresses,
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
    /// The Kubernetes pod, from the CNI arguments `K8S_POD_NAMESPACE` and
    /// `K8S_POD_NAME` at ADD. Absent (no such arguments, or a record from
    /// before these fields): unknown, and no NetworkPolicy selector
    /// matches the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// What ADD answered (and answers again when repeated).
    pub result: PodResult,
}

impl Record {
    /// The pod's addresses, IPv4 first.
    pub fn ips(&self) -> Vec<IpAddr> {
        self.addrs
            .addresses
            .iter()
            .map(|a| a.address.addr())
            .collect()
    }
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
    Unavailable { ip: IpAddr, why: String },
    #[error("{id} already has a record (addresses {addrs})")]
    AlreadyExists { id: AttachmentId, addrs: Addresses },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn describe(pools: &PoolSets) -> String {
    pools
        .pools()
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
        // Create the tables so read transactions always find them, and
        // move a pre-IPv6 store's IPv4 tables into them.
        let txn = db.begin_write()?;
        txn.open_table(ATTACHMENTS)?;
        txn.open_table(OBJECTS)?;
        {
            let mut addresses = txn.open_table(ADDRESSES)?;
            let mut cursors = txn.open_table(CURSORS)?;
            let legacy = txn.open_table(LEGACY_ALLOCATIONS)?;
            for item in legacy.iter()? {
                let (k, v) = item?;
                let ip = Ipv4Addr::from(k.value()).to_string();
                addresses.insert(ip.as_str(), v.value())?;
            }
            let legacy = txn.open_table(LEGACY_CURSORS)?;
            for item in legacy.iter()? {
                let (k, v) = item?;
                let ip = Ipv4Addr::from(v.value()).to_string();
                cursors.insert((k.value(), 4), ip.as_str())?;
            }
        }
        txn.delete_table(LEGACY_ALLOCATIONS)?;
        txn.delete_table(LEGACY_CURSORS)?;
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

    /// Number of allocated addresses for which `counts` says yes (those a
    /// set of pools could hand out).
    pub fn allocated_in(&self, counts: impl Fn(IpAddr) -> bool) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ADDRESSES)?;
        let mut n = 0;
        for item in table.iter()? {
            let (k, _) = item?;
            if let Ok(ip) = k.value().parse::<IpAddr>() {
                if counts(ip) {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// In one write transaction: choose one address from each range set
    /// of `pools` (the `requested` one of its family, or the next free one
    /// after the network's cursor of that family), record the allocations,
    /// and store the record `make` builds from the pools and addresses, as
    /// `pending`. All or nothing: when one set fails, nothing is written.
    /// Fails if `id` already has a record, or a requested address has no
    /// set of its family.
    pub fn allocate_pending(
        &self,
        id: &AttachmentId,
        pools: &PoolSets,
        requested: &[IpAddr],
        make: impl FnOnce(&[(&Pool, IpAddr)]) -> Record,
    ) -> Result<Record, AllocError> {
        let txn = self.db.begin_write().map_err(StoreError::from)?;
        let record = {
            let mut attachments = txn.open_table(ATTACHMENTS).map_err(StoreError::from)?;
            let mut addresses = txn.open_table(ADDRESSES).map_err(StoreError::from)?;
            let mut cursors = txn.open_table(CURSORS).map_err(StoreError::from)?;
            if let Some(existing) = attachments.get(id.key()).map_err(StoreError::from)? {
                let rec = decode(&id.to_string(), existing.value())?;
                return Err(AllocError::AlreadyExists {
                    id: id.clone(),
                    addrs: rec.addrs,
                });
            }
            if let Some(&ip) = requested
                .iter()
                .find(|ip| !pools.0.iter().any(|s| s.is_ipv4() == ip.is_ipv4()))
            {
                return Err(AllocError::Unavailable {
                    ip,
                    why: format!("no range of its family in {}", describe(pools)),
                });
            }
            let holder = serde_json::to_string(&id).map_err(|e| StoreError::Corrupt {
                key: id.to_string(),
                source: e,
            })?;
            let mut chosen: Vec<(&Pool, IpAddr)> = Vec::with_capacity(pools.0.len());
            for set in &pools.0 {
                let wanted = requested.iter().find(|ip| ip.is_ipv4() == set.is_ipv4());
                let (pool, ip) = match wanted {
                    Some(&ip) => {
                        let Some(pool) = set.pool_of(ip) else {
                            return Err(AllocError::Unavailable {
                                ip,
                                why: format!(
                                    "not inside the allocatable ranges {}",
                                    describe(pools)
                                ),
                            });
                        };
                        let text = ip.to_string();
                        if let Some(holder) =
                            addresses.get(text.as_str()).map_err(StoreError::from)?
                        {
                            return Err(AllocError::Unavailable {
                                ip,
                                why: format!("already allocated to {}", holder.value()),
                            });
                        }
                        (pool, ip)
                    }
                    None => {
                        let fam = if set.is_ipv4() { 4 } else { 6 };
                        let cursor = cursors
                            .get((id.network.as_str(), fam))
                            .map_err(StoreError::from)?
                            .and_then(|v| v.value().parse::<IpAddr>().ok());
                        let picked = set.pick(cursor, |a| {
                            addresses
                                .get(a.to_string().as_str())
                                .map(|v| v.is_some())
                                .map_err(StoreError::from)
                        })?;
                        let Some((idx, ip)) = picked else {
                            return Err(AllocError::Exhausted {
                                pools: describe(pools),
                            });
                        };
                        cursors
                            .insert((id.network.as_str(), fam), ip.to_string().as_str())
                            .map_err(StoreError::from)?;
                        (&set.0[idx], ip)
                    }
                };
                addresses
                    .insert(ip.to_string().as_str(), holder.as_str())
                    .map_err(StoreError::from)?;
                chosen.push((pool, ip));
            }
            let mut record = make(&chosen);
            record.state = State::Pending;
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
            let mut allocations = txn.open_table(ADDRESSES)?;
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
                            stale.push(k.value().to_string());
                        }
                    }
                    for ip in stale {
                        allocations.remove(ip.as_str())?;
                    }
                    rec
                }
            }
        };
        txn.commit()?;
        Ok(removed)
    }

    /// Every stored object (key, JSON), in key order.
    pub fn objects(&self) -> Result<Vec<(String, String)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OBJECTS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            out.push((k.value().to_string(), v.value().to_string()));
        }
        Ok(out)
    }

    /// Put every `(key, JSON)` of `puts` and delete every key of `deletes`,
    /// in one transaction (all or nothing). Returns, for each of
    /// `deletes`, whether it was there.
    pub fn write_objects(
        &self,
        puts: &[(String, String)],
        deletes: &[String],
    ) -> Result<Vec<bool>, StoreError> {
        let txn = self.db.begin_write()?;
        let existed = {
            let mut table = txn.open_table(OBJECTS)?;
            for (k, v) in puts {
                table.insert(k.as_str(), v.as_str())?;
            }
            let mut existed = Vec::with_capacity(deletes.len());
            for k in deletes {
                existed.push(table.remove(k.as_str())?.is_some());
            }
            existed
        };
        txn.commit()?;
        Ok(existed)
    }

    /// Who holds `ip`, if anyone.
    pub fn holder_of(&self, ip: IpAddr) -> Result<Option<AttachmentId>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ADDRESSES)?;
        match table.get(ip.to_string().as_str())? {
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
pub(crate) mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use ferry_api::pod::IpamRequest;

    use ipnet::IpNet;

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

    /// The node pools of `cidrs`, each family's gateway its first CIDR's
    /// first host.
    fn pools(cidrs: &[&str]) -> PoolSets {
        let cidrs: Vec<IpNet> = cidrs.iter().map(|c| c.parse().unwrap()).collect();
        let mut gateways: Vec<IpAddr> = Vec::new();
        for c in &cidrs {
            if !gateways.iter().any(|g| g.is_ipv4() == c.addr().is_ipv4()) {
                gateways.push(crate::ipam::first_host(*c));
            }
        }
        PoolSets::for_request(&IpamRequest::default(), &cidrs, &gateways).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn make(id: &AttachmentId) -> impl FnOnce(&[(&Pool, IpAddr)]) -> Record + '_ {
        move |chosen| Record {
            id: id.clone(),
            addrs: Addresses {
                addresses: chosen
                    .iter()
                    .map(|(pool, ip)| PodAddress {
                        address: IpNet::new(*ip, pool.prefix_len()).unwrap(),
                        gateway: pool.gateway,
                    })
                    .collect(),
            },
            host_ifname: "fyx".into(),
            mac: MacAddr::for_pod_ip(chosen[0].1),
            netns: "/run/netns/x".into(),
            netns_id: None,
            mtu: 1500,
            attachment: Default::default(),
            state: State::Ready, // overwritten to Pending by the store
            pod_namespace: None,
            pod_name: None,
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
        let p = pools(&["10.88.0.0/29"]);
        let a = AttachmentId::new("n", "a", "eth0");
        let b = AttachmentId::new("n", "b", "eth0");
        let ra = store.allocate_pending(&a, &p, &[], make(&a)).unwrap();
        assert_eq!(ra.ips(), [ip("10.88.0.2")]);
        assert_eq!(ra.state, State::Pending);
        assert_eq!(store.holder_of(ip("10.88.0.2")).unwrap(), Some(a.clone()));
        // Same key again is refused.
        assert!(matches!(
            store.allocate_pending(&a, &p, &[], make(&a)),
            Err(AllocError::AlreadyExists { .. })
        ));
        // Released address is not reused at once (cursor).
        assert_eq!(store.release(&a).unwrap().map(|r| r.ips()), Some(ra.ips()));
        assert_eq!(store.holder_of(ip("10.88.0.2")).unwrap(), None);
        assert_eq!(store.release(&a).unwrap(), None, "release is idempotent");
        let rb = store.allocate_pending(&b, &p, &[], make(&b)).unwrap();
        assert_eq!(rb.ips(), [ip("10.88.0.3")]);
        assert!(store.set_state(&b, State::Ready).unwrap());
        assert!(!store.set_state(&a, State::Ready).unwrap());
        assert_eq!(store.get(&b).unwrap().unwrap().state, State::Ready);
        assert_eq!(store.allocated_in(|ip| p.pool_of(ip).is_some()).unwrap(), 1);
    }

    #[test]
    fn explicit_requests_and_exhaustion() {
        let dir = TempDir::new("explicit");
        let store = Store::open(&dir.0).unwrap();
        let p = pools(&["10.88.0.0/30"]); // only .2 is allocatable
        let a = AttachmentId::new("n", "a", "eth0");
        let b = AttachmentId::new("n", "b", "eth0");
        let two = ip("10.88.0.2");
        for bad in ["10.88.0.1", "10.88.0.3", "10.99.0.2", "fd00::2"] {
            let e = store
                .allocate_pending(&a, &p, &[ip(bad)], make(&a))
                .unwrap_err();
            assert!(matches!(e, AllocError::Unavailable { .. }), "{bad}: {e}");
        }
        assert_eq!(
            store
                .allocate_pending(&a, &p, &[two], make(&a))
                .unwrap()
                .ips(),
            [two]
        );
        let e = store
            .allocate_pending(&b, &p, &[two], make(&b))
            .unwrap_err();
        assert!(matches!(e, AllocError::Unavailable { .. }), "{e}");
        assert!(e.to_string().contains("already allocated"), "{e}");
        let e = store.allocate_pending(&b, &p, &[], make(&b)).unwrap_err();
        assert!(matches!(e, AllocError::Exhausted { .. }), "{e}");
        assert!(
            store.get(&b).unwrap().is_none(),
            "a failed allocation leaves no record"
        );
    }

    #[test]
    fn dual_stack_gets_one_address_per_family_and_releases_both() {
        let dir = TempDir::new("dual");
        let store = Store::open(&dir.0).unwrap();
        let p = pools(&["10.88.0.0/29", "fd00:10:88::/64"]);
        let a = AttachmentId::new("n", "a", "eth0");
        let b = AttachmentId::new("n", "b", "eth0");
        let ra = store.allocate_pending(&a, &p, &[], make(&a)).unwrap();
        assert_eq!(ra.ips(), [ip("10.88.0.2"), ip("fd00:10:88::2")]);
        assert_eq!(ra.addrs.addresses[1].gateway, ip("fd00:10:88::1"));
        assert_eq!(ra.addrs.to_string(), "10.88.0.2/29, fd00:10:88::2/64");
        // Requested IPv6, the IPv4 one picked.
        let rb = store
            .allocate_pending(&b, &p, &[ip("fd00:10:88::99")], make(&b))
            .unwrap();
        assert_eq!(rb.ips(), [ip("10.88.0.3"), ip("fd00:10:88::99")]);
        assert_eq!(
            store.holder_of(ip("fd00:10:88::99")).unwrap(),
            Some(b.clone())
        );
        assert_eq!(store.allocated_in(|ip| p.pool_of(ip).is_some()).unwrap(), 4);
        // The record reads back with both.
        assert_eq!(store.get(&b).unwrap().unwrap().ips(), rb.ips());
        store.release(&b).unwrap();
        for gone in ["10.88.0.3", "fd00:10:88::99"] {
            assert_eq!(store.holder_of(ip(gone)).unwrap(), None, "{gone}");
        }
        assert_eq!(store.allocated_in(|ip| p.pool_of(ip).is_some()).unwrap(), 2);
    }

    /// IPv4 picked, IPv6 exhausted: nothing is kept (one transaction), and
    /// the IPv4 address and cursor are as before.
    #[test]
    fn a_failure_half_way_leaks_nothing() {
        let dir = TempDir::new("halfway");
        let store = Store::open(&dir.0).unwrap();
        let cidrs: Vec<IpNet> = vec![
            "10.88.0.0/24".parse().unwrap(),
            "fd00::/64".parse().unwrap(),
        ];
        let req = IpamRequest {
            ranges: vec![
                ferry_api::pod::RangeSpec {
                    subnet: cidrs[0],
                    range_start: None,
                    range_end: None,
                    gateway: None,
                },
                ferry_api::pod::RangeSpec {
                    subnet: "fd00::/126".parse().unwrap(),
                    range_start: None,
                    range_end: None,
                    gateway: None,
                },
            ],
            ..Default::default()
        };
        let p = PoolSets::for_request(&req, &cidrs, &[ip("10.88.0.1"), ip("fd00::1")]).unwrap();
        // fd00::/126 hands out ::2 and ::3 only.
        for c in ["a", "b"] {
            let id = AttachmentId::new("n", c, "eth0");
            store.allocate_pending(&id, &p, &[], make(&id)).unwrap();
        }
        let c = AttachmentId::new("n", "c", "eth0");
        let e = store.allocate_pending(&c, &p, &[], make(&c)).unwrap_err();
        assert!(matches!(e, AllocError::Exhausted { .. }), "{e}");
        assert_eq!(
            store.holder_of(ip("10.88.0.4")).unwrap(),
            None,
            "v4 not kept"
        );
        assert!(store.get(&c).unwrap().is_none());
        // A requested IPv6 address that is taken fails the same way.
        let e = store
            .allocate_pending(&c, &p, &[ip("fd00::2")], make(&c))
            .unwrap_err();
        assert!(matches!(e, AllocError::Unavailable { .. }), "{e}");
        assert_eq!(store.holder_of(ip("10.88.0.4")).unwrap(), None);
        // Freeing an IPv6 address lets the next pod in, with the IPv4
        // address the failed tries did not consume.
        store.release(&AttachmentId::new("n", "a", "eth0")).unwrap();
        let rc = store.allocate_pending(&c, &p, &[], make(&c)).unwrap();
        assert_eq!(rc.ips(), [ip("10.88.0.4"), ip("fd00::2")]);
    }

    /// A store written before IPv6 (IPv4 allocations and cursors as u32,
    /// records with top-level `ip`/`address`/`gateway`) opens with every
    /// allocation kept and its cursor followed.
    #[test]
    fn a_pre_ipv6_store_is_upgraded() {
        let dir = TempDir::new("upgrade");
        std::fs::create_dir_all(&dir.0).unwrap();
        let a = AttachmentId::new("n", "a", "eth0");
        {
            let db = Database::create(dir.0.join("ferry.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut att = txn.open_table(ATTACHMENTS).unwrap();
                let old = r#"{"id":{"network":"n","container_id":"a","ifname":"eth0"},
                    "ip":"10.88.0.2","address":"10.88.0.2/29","gateway":"10.88.0.1",
                    "host_ifname":"fyx","mac":"0a:58:0a:58:00:02","netns":"/run/netns/x",
                    "mtu":1500,"state":"ready",
                    "result":{"interfaces":[],"ips":[],"routes":[]}}"#;
                att.insert(a.key(), old).unwrap();
                let mut alloc = txn.open_table(LEGACY_ALLOCATIONS).unwrap();
                let holder = serde_json::to_string(&a).unwrap();
                alloc
                    .insert(u32::from(Ipv4Addr::new(10, 88, 0, 2)), holder.as_str())
                    .unwrap();
                let mut cur = txn.open_table(LEGACY_CURSORS).unwrap();
                cur.insert("n", u32::from(Ipv4Addr::new(10, 88, 0, 2)))
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let store = Store::open(&dir.0).unwrap();
        let rec = store.get(&a).unwrap().unwrap();
        assert_eq!(rec.ips(), [ip("10.88.0.2")]);
        assert_eq!(rec.addrs.addresses[0].gateway, ip("10.88.0.1"));
        assert_eq!(store.holder_of(ip("10.88.0.2")).unwrap(), Some(a.clone()));
        let p = pools(&["10.88.0.0/29"]);
        let b = AttachmentId::new("n", "b", "eth0");
        let rb = store.allocate_pending(&b, &p, &[], make(&b)).unwrap();
        assert_eq!(rb.ips(), [ip("10.88.0.3")], "after the old cursor");
        // Written back in the new form, and opened again: still there.
        store.set_state(&a, State::Ready).unwrap();
        drop(store);
        let store = Store::open(&dir.0).unwrap();
        assert_eq!(store.get(&a).unwrap().unwrap().ips(), [ip("10.88.0.2")]);
        assert_eq!(store.allocated_in(|ip| p.pool_of(ip).is_some()).unwrap(), 2);
        store.release(&a).unwrap();
        assert_eq!(store.holder_of(ip("10.88.0.2")).unwrap(), None);
    }

    #[test]
    fn reopen_keeps_records_and_lists_pending() {
        let dir = TempDir::new("reopen");
        let p = pools(&["10.88.0.0/24", "fd00::/64"]);
        let a = AttachmentId::new("n", "a", "eth0");
        let b = AttachmentId::new("n", "b", "eth0");
        {
            let store = Store::open(&dir.0).unwrap();
            store.allocate_pending(&a, &p, &[], make(&a)).unwrap();
            store.set_state(&a, State::Ready).unwrap();
            store.allocate_pending(&b, &p, &[], make(&b)).unwrap();
        }
        let store = Store::open(&dir.0).unwrap();
        let ready = store.ready().unwrap();
        let pending = store.pending().unwrap();
        assert_eq!(ready.iter().map(|r| &r.id).collect::<Vec<_>>(), vec![&a]);
        assert_eq!(pending.iter().map(|r| &r.id).collect::<Vec<_>>(), vec![&b]);
        // Rolling the pending one back frees its addresses; the ready one stays.
        let rolled = store.release(&b).unwrap().unwrap();
        for ip in rolled.ips() {
            assert_eq!(store.holder_of(ip).unwrap(), None);
        }
        drop(store);
        let store = Store::open(&dir.0).unwrap();
        assert!(store.pending().unwrap().is_empty());
        assert_eq!(store.ready().unwrap().len(), 1);
        for ip in ready[0].ips() {
            assert_eq!(store.holder_of(ip).unwrap(), Some(a.clone()));
        }
    }

    #[test]
    fn fifty_threads_get_fifty_distinct_addresses() {
        let dir = TempDir::new("threads");
        let store = Arc::new(Store::open(&dir.0).unwrap());
        let p = Arc::new(pools(&["10.88.0.0/26", "fd00::/64"])); // 61 IPv4 allocatable
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let store = Arc::clone(&store);
                let p = Arc::clone(&p);
                std::thread::spawn(move || {
                    let id = AttachmentId::new("n", &format!("c{i}"), "eth0");
                    store
                        .allocate_pending(&id, &p, &[], make(&id))
                        .unwrap()
                        .ips()
                })
            })
            .collect();
        let ips: Vec<IpAddr> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let unique: BTreeSet<_> = ips.iter().collect();
        assert_eq!(unique.len(), 100, "{ips:?}");
        assert_eq!(store.records().unwrap().len(), 50);
        assert_eq!(
            store.allocated_in(|ip| p.pool_of(ip).is_some()).unwrap(),
            100
        );
    }
}
