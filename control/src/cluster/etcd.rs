//! The etcd v3 datastore.
//!
//! Keys, under the configured prefix (default `/ferry`):
//! - `<prefix>/settings`: the [`ClusterSettings`] JSON, written once by the
//!   first node (create-if-absent), read and compared by every other;
//! - `<prefix>/blocks/<a.b.c.d>-<len>`: a [`NodeRecord`] JSON per claimed
//!   block, attached to its node's lease. A claim is a transaction "if the
//!   key was never created, put it", so two nodes can never hold one block;
//!   the lease (long, 24 h by default, as Flannel's) is renewed well
//!   before it ends; a node that stops renewing loses its block when the
//!   lease expires, and the watchers see the key deleted.
//!
//! Every call is bounded by [`CALL_TIMEOUT`]; a failed call is
//! [`DsError::Unreachable`] with the client's whole error chain (TLS and
//! connection errors name their cause).

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use ipnet::Ipv4Net;

use super::{
    candidate_blocks, Change, Claim, ClusterSettings, Datastore, DsError, Listing, NodeRecord,
    NodeWatch, WatchEvent,
};

/// How to reach etcd and where ferry's keys live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// `http://host:port` or `https://host:port` (then `ca_file` is needed).
    pub endpoints: Vec<String>,
    /// Key prefix, e.g. `/ferry` (no trailing slash).
    pub prefix: String,
    /// TTL of a node's lease.
    pub lease_ttl: Duration,
    pub ca_file: Option<std::path::PathBuf>,
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
}

/// Longest wait for one etcd call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a connection to an endpoint.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Etcd {
    client: Client,
    endpoints: Vec<String>,
    prefix: String,
    lease_ttl: i64,
}

/// The whole chain of an error, causes included (tonic's own Display says
/// only "transport error").
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn unreachable(what: &str, e: etcd_client::Error) -> DsError {
    DsError::Unreachable(format!("{what}: {}", chain(&e)))
}

/// One etcd call, bounded.
pub(crate) async fn bounded<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, DsError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unreachable(what, e)),
        Err(_) => Err(DsError::Unreachable(format!(
            "{what}: no answer within {CALL_TIMEOUT:?}"
        ))),
    }
}

fn read_file(what: &str, path: &std::path::Path) -> Result<Vec<u8>, DsError> {
    std::fs::read(path)
        .map_err(|e| DsError::Refused(format!("read {what} {}: {e}", path.display())))
}

/// The block of a `<prefix>/blocks/<a.b.c.d>-<len>` key.
pub fn block_of_key(prefix: &str, key: &[u8]) -> Option<Ipv4Net> {
    let key = std::str::from_utf8(key).ok()?;
    let name = key.strip_prefix(prefix)?.strip_prefix("/blocks/")?;
    let (addr, len) = name.split_once('-')?;
    let net = Ipv4Net::new(addr.parse().ok()?, len.parse().ok()?).ok()?;
    (net.trunc() == net).then_some(net)
}

/// A record read from a key: its JSON, and a block that matches the key.
fn record_of(prefix: &str, kv: &KeyValue) -> Result<NodeRecord, (String, String)> {
    let key = String::from_utf8_lossy(kv.key()).into_owned();
    let Some(block) = block_of_key(prefix, kv.key()) else {
        return Err((key, "not a block key".into()));
    };
    match serde_json::from_slice::<NodeRecord>(kv.value()) {
        Ok(r) if r.block == block => Ok(r),
        Ok(r) => Err((key, format!("record says block {}", r.block))),
        Err(e) => Err((key, format!("not a node record: {e}"))),
    }
}

/// A client for `cfg`'s endpoints (TLS when a CA is given), shared by the
/// node registry and the object store ([`crate::services::etcd`]).
pub(crate) async fn client(cfg: &EtcdOptions) -> Result<Client, DsError> {
    let mut opts = ConnectOptions::new()
        .with_timeout(CALL_TIMEOUT)
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    if let Some(ca) = &cfg.ca_file {
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read_file("CA", ca)?));
        if let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) {
            tls = tls.identity(Identity::from_pem(
                read_file("certificate", cert)?,
                read_file("key", key)?,
            ));
        }
        opts = opts.with_tls(tls);
    }
    bounded(
        "connect",
        Client::connect(cfg.endpoints.clone(), Some(opts)),
    )
    .await
}

impl Etcd {
    /// A client for `cfg`'s endpoints (TLS when a CA is given). Connecting
    /// is lazy: an unreachable endpoint shows at the first call.
    pub async fn connect(cfg: &EtcdOptions) -> Result<Etcd, DsError> {
        Ok(Etcd {
            client: client(cfg).await?,
            endpoints: cfg.endpoints.clone(),
            prefix: cfg.prefix.clone(),
            lease_ttl: cfg.lease_ttl.as_secs() as i64,
        })
    }

    fn settings_key(&self) -> String {
        format!("{}/settings", self.prefix)
    }

    fn blocks_prefix(&self) -> String {
        format!("{}/blocks/", self.prefix)
    }

    fn block_key(&self, b: Ipv4Net) -> String {
        format!("{}/blocks/{}-{}", self.prefix, b.network(), b.prefix_len())
    }

    /// Put `record` at its block's key if the key has never been created
    /// (or, `own_lease` given, if it is still attached to that lease).
    async fn put_if(
        &self,
        record: &NodeRecord,
        lease: i64,
        guard: Compare,
    ) -> Result<bool, DsError> {
        let key = self.block_key(record.block);
        let value = serde_json::to_vec(record).map_err(|e| DsError::Refused(e.to_string()))?;
        let txn = Txn::new().when([guard]).and_then([TxnOp::put(
            key,
            value,
            Some(PutOptions::new().with_lease(lease)),
        )]);
        let mut c = self.client.clone();
        Ok(bounded("claim transaction", c.txn(txn)).await?.succeeded())
    }

    /// A lease for a new claim.
    async fn grant(&self) -> Result<i64, DsError> {
        let mut c = self.client.clone();
        Ok(bounded("grant lease", c.lease_grant(self.lease_ttl, None))
            .await?
            .id())
    }

    /// Whether `lease` is alive (a keep-alive answered with a TTL > 0).
    async fn keep_alive(&self, lease: i64) -> Result<bool, DsError> {
        let mut c = self.client.clone();
        // Opening the stream is the keep-alive: etcd-client sends one and
        // reads its answer (a TTL of 0 is its "lease not found"). Sending
        // another on the keeper renewed twice per period.
        match tokio::time::timeout(CALL_TIMEOUT, c.lease_keep_alive(lease)).await {
            Ok(Ok(_)) => Ok(true),
            // etcd answers a keep-alive of an expired or revoked lease with
            // TTL 0, which etcd-client reports as "lease not found".
            Ok(Err(e)) if chain(&e).contains("lease not found") => Ok(false),
            Ok(Err(e)) => Err(unreachable("lease keep-alive", e)),
            Err(_) => Err(DsError::Unreachable(format!(
                "lease keep-alive: no answer within {CALL_TIMEOUT:?}"
            ))),
        }
    }
}

#[async_trait]
impl Datastore for Etcd {
    fn describe(&self) -> String {
        format!("etcd {}", self.endpoints.join(","))
    }

    async fn settings(&self, mine: &ClusterSettings) -> Result<ClusterSettings, DsError> {
        let key = self.settings_key();
        let value = serde_json::to_vec(mine).map_err(|e| DsError::Refused(e.to_string()))?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let mut c = self.client.clone();
        let resp = bounded("cluster settings", c.txn(txn)).await?;
        if resp.succeeded() {
            log::info!("cluster settings written to {key} (first node)");
            return Ok(mine.clone());
        }
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(g) = op {
                if let Some(kv) = g.kvs().first() {
                    return serde_json::from_slice(kv.value()).map_err(|e| {
                        DsError::Refused(format!("{key} holds no cluster settings: {e}"))
                    });
                }
            }
        }
        Err(DsError::Refused(format!("{key}: no value read back")))
    }

    async fn claim(
        &self,
        me: &NodeRecord,
        settings: &ClusterSettings,
        preferred: Option<Ipv4Net>,
    ) -> Result<Claim, DsError> {
        // A live claim by this node's name (a restart within the lease):
        // keep it, on its own lease.
        for r in self.list_kvs().await? {
            let Ok(rec) = record_of(&self.prefix, &r) else {
                continue;
            };
            if rec.name != me.name {
                continue;
            }
            let lease = r.lease();
            if lease != 0 && self.keep_alive(lease).await? {
                let record = NodeRecord {
                    block: rec.block,
                    block6: settings.block6(rec.block),
                    ..me.clone()
                };
                let key = self.block_key(rec.block);
                if self
                    .put_if(&record, lease, Compare::lease(key, CompareOp::Equal, lease))
                    .await?
                {
                    log::info!("block {} is still this node's (lease {lease:x})", rec.block);
                    return Ok(Claim { record, lease });
                }
            }
        }
        let lease = self.grant().await?;
        let taken: std::collections::BTreeSet<Ipv4Net> = self
            .list_kvs()
            .await?
            .iter()
            .filter_map(|kv| block_of_key(&self.prefix, kv.key()))
            .collect();
        for block in candidate_blocks(settings.cidr, settings.block_len, preferred) {
            if taken.contains(&block) {
                continue;
            }
            let record = NodeRecord {
                block,
                block6: settings.block6(block),
                ..me.clone()
            };
            let key = self.block_key(block);
            if self
                .put_if(
                    &record,
                    lease,
                    Compare::create_revision(key, CompareOp::Equal, 0),
                )
                .await?
            {
                return Ok(Claim { record, lease });
            }
            // Taken between the listing and the transaction: next one.
        }
        let mut c = self.client.clone();
        let _ = bounded("revoke lease", c.lease_revoke(lease)).await;
        Err(DsError::Full {
            cidr: settings.cidr,
            block_len: settings.block_len,
        })
    }

    async fn renew(&self, claim: &Claim, now: u64) -> Result<bool, DsError> {
        if !self.keep_alive(claim.lease).await? {
            return Ok(false);
        }
        let record = NodeRecord {
            renewed: now,
            ..claim.record.clone()
        };
        let key = self.block_key(record.block);
        self.put_if(
            &record,
            claim.lease,
            Compare::lease(key, CompareOp::Equal, claim.lease),
        )
        .await
    }

    async fn release(&self, claim: &Claim) -> Result<(), DsError> {
        let mut c = self.client.clone();
        bounded("revoke lease", c.lease_revoke(claim.lease)).await?;
        Ok(())
    }

    async fn release_node(&self, name: &str) -> Result<Vec<Ipv4Net>, DsError> {
        let mut released = Vec::new();
        for kv in self.list_kvs().await? {
            let Ok(rec) = record_of(&self.prefix, &kv) else {
                continue;
            };
            if rec.name != name {
                continue;
            }
            let mut c = self.client.clone();
            if kv.lease() != 0 {
                // The lease holds only this block's key: revoking it is
                // the node's whole claim gone at once.
                bounded("revoke lease", c.lease_revoke(kv.lease())).await?;
            } else {
                bounded("delete block", c.delete(kv.key().to_vec(), None)).await?;
            }
            released.push(rec.block);
        }
        Ok(released)
    }

    async fn list(&self) -> Result<Listing, DsError> {
        let mut c = self.client.clone();
        let resp = bounded(
            "list nodes",
            c.get(self.blocks_prefix(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let mut listing = Listing {
            revision: resp.header().map_or(0, |h| h.revision()),
            ..Listing::default()
        };
        for kv in resp.kvs() {
            match record_of(&self.prefix, kv) {
                Ok(r) => listing.nodes.push(r),
                Err(u) => listing.unreadable.push(u),
            }
        }
        Ok(listing)
    }

    async fn watch(&self, revision: i64) -> Result<Box<dyn NodeWatch>, DsError> {
        let stream =
            watch_prefix(&self.client, "watch nodes", self.blocks_prefix(), revision).await?;
        Ok(Box::new(EtcdWatch {
            stream,
            prefix: self.prefix.clone(),
        }))
    }
}

impl Etcd {
    async fn list_kvs(&self) -> Result<Vec<KeyValue>, DsError> {
        let mut c = self.client.clone();
        let mut resp = bounded(
            "list blocks",
            c.get(self.blocks_prefix(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        Ok(resp.take_kvs())
    }
}

struct EtcdWatch {
    stream: etcd_client::WatchStream,
    prefix: String,
}

/// A watch of every key under `prefix` from `revision` + 1 (a listing's
/// revision), with progress notifications.
pub(crate) async fn watch_prefix(
    client: &Client,
    what: &str,
    prefix: String,
    revision: i64,
) -> Result<etcd_client::WatchStream, DsError> {
    let mut c = client.clone();
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1)
        .with_progress_notify();
    bounded(what, c.watch(prefix, Some(opts))).await
}

/// The next message of a prefix watch, or why its watcher must list again
/// (the stream ended or failed, the watch was compacted or cancelled).
pub(crate) async fn next_message(
    stream: &mut etcd_client::WatchStream,
) -> Result<etcd_client::WatchResponse, String> {
    let msg = match stream.message().await {
        Ok(Some(m)) => m,
        Ok(None) => return Err("watch stream ended".into()),
        Err(e) => return Err(format!("watch: {}", chain(&e))),
    };
    if msg.compact_revision() > 0 {
        return Err(format!(
            "watch compacted (oldest revision now {})",
            msg.compact_revision()
        ));
    }
    if msg.canceled() {
        return Err(format!("watch cancelled: {}", msg.cancel_reason()));
    }
    Ok(msg)
}

#[async_trait]
impl NodeWatch for EtcdWatch {
    async fn next(&mut self) -> WatchEvent {
        loop {
            let msg = match next_message(&mut self.stream).await {
                Ok(m) => m,
                Err(why) => return WatchEvent::Resync(why),
            };
            let revision = msg.header().map_or(0, |h| h.revision());
            let mut changes = Vec::new();
            let mut unreadable = Vec::new();
            for ev in msg.events() {
                let Some(kv) = ev.kv() else { continue };
                match ev.event_type() {
                    EventType::Put => match record_of(&self.prefix, kv) {
                        Ok(r) => changes.push(Change::Put(r)),
                        Err(u) => {
                            // A record overwritten with garbage is no longer a route.
                            if let Some(b) = block_of_key(&self.prefix, kv.key()) {
                                changes.push(Change::Gone(b));
                            }
                            unreadable.push(u)
                        }
                    },
                    EventType::Delete => {
                        if let Some(b) = block_of_key(&self.prefix, kv.key()) {
                            changes.push(Change::Gone(b));
                        }
                    }
                }
            }
            if changes.is_empty() && unreadable.is_empty() && !msg.created() {
                // Progress notification: nothing changed.
                continue;
            }
            if msg.created() && changes.is_empty() {
                continue;
            }
            return WatchEvent::Changes {
                changes,
                unreadable,
                revision,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_keys_round_trip_and_garbage_is_refused() {
        let b: Ipv4Net = "10.70.3.0/24".parse().unwrap();
        assert_eq!(
            block_of_key("/ferry", b"/ferry/blocks/10.70.3.0-24"),
            Some(b)
        );
        for bad in [
            &b"/ferry/blocks/10.70.3.1-24"[..],
            b"/ferry/blocks/10.70.3.0",
            b"/ferry/blocks/10.70.3.0-33",
            b"/other/blocks/10.70.3.0-24",
            b"/ferry/blocks/\xff-24",
        ] {
            assert_eq!(block_of_key("/ferry", bad), None, "{bad:?}");
        }
    }
}
