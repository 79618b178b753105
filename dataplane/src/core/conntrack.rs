//! Connection tracking for service translation and network policy: the
//! one piece of mutable state every worker shares.
//!
//! Why shared, not per worker: the two directions of a flow arrive on
//! queues the dataplane does not choose. A veth pod's kernel picks its TX
//! queue from the socket's random `sk_txhash` (or XPS), so a client's
//! packets and the backend's replies land on unrelated workers; steering
//! them to one owner would cost a hand-off (a copy between workers' frame
//! pools) for about half of all packets. A table both workers read is
//! cheaper: it is split into [`SHARDS`] independently locked shards, a
//! lookup locks one shard for a hash probe (an uncontended lock is one
//! atomic exchange), and nothing else in the pipeline takes a lock.
//!
//! Bounded: `capacity` entries in all, spread evenly over the shards, each
//! shard's map allocated once at its full size when the table is made, so
//! an insert never allocates; a full shard first drops its expired entries,
//! then refuses (`insert_failed`, the packet is dropped `ct_full`).
//! Timeouts are Cilium's defaults: SYN 60 s, established 6 h, FIN/RST 10 s,
//! UDP 60 s. Expired entries are swept a shard at a time
//! ([`Conntrack::sweep_step`], at most every [`SWEEP_EVERY_NS`]) and
//! ignored by lookups meanwhile.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use rustc_hash::FxHasher;

use super::wire::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// Independently locked parts of the table.
pub const SHARDS: usize = 64;
/// How often a worker may sweep one shard.
pub const SWEEP_EVERY_NS: u64 = 100_000_000;

const SECOND: u64 = 1_000_000_000;
/// A TCP flow that has not been answered yet.
pub const TCP_SYN_TIMEOUT_NS: u64 = 60 * SECOND;
/// A TCP flow both sides have spoken in.
pub const TCP_ESTABLISHED_TIMEOUT_NS: u64 = 6 * 3600 * SECOND;
/// A TCP flow after a FIN or RST.
pub const TCP_CLOSING_TIMEOUT_NS: u64 = 10 * SECOND;
pub const UDP_TIMEOUT_NS: u64 = 60 * SECOND;

/// IP protocol numbers the table keys on, and the pseudo-protocol of
/// session-affinity entries.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_AFFINITY: u8 = 255;

/// One direction of a flow, as it arrives: addresses as IPv6 (IPv4
/// mapped), ports, protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// An allowed flow of network policy (identity entries, never
    /// translated), not a service flow: the two never share an entry.
    pub policy: bool,
    pub proto: u8,
    pub src: u128,
    pub dst: u128,
    pub sport: u16,
    pub dport: u16,
}

/// An address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub ip: u128,
    pub port: u16,
}

/// What a packet matching an entry is rewritten to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    pub src: Endpoint,
    pub dst: Endpoint,
}

/// Where a TCP flow is, as far as its timeout goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowState {
    /// Only the opening side has spoken.
    Opening,
    Established,
    /// A FIN or RST was seen.
    Closing,
}

/// One tracked direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub translation: Translation,
    /// The service port the flow was translated for (its id's hash).
    pub service: u64,
    /// The entry of the other direction.
    pub peer: FlowKey,
    /// This direction is the replies'.
    pub reply: bool,
    /// A NodePort flow's replies leave by the uplink, to this MAC (the
    /// one the request came from), not by the routes.
    pub via: Option<[u8; 6]>,
    pub state: FlowState,
    /// Monotonic nanoseconds after which the entry is dead.
    pub deadline: u64,
}

/// Counters of the table, for stats and metrics (the table API's type).
pub use ferry_api::table::ConntrackStats;

type Map = HashMap<FlowKey, Entry, BuildHasherDefault<FxHasher>>;

/// The shared, sharded, bounded table.
#[derive(Debug)]
pub struct Conntrack {
    shards: Box<[Mutex<Map>]>,
    per_shard: usize,
    inserts: AtomicU64,
    insert_failed: AtomicU64,
    expired: AtomicU64,
    last_sweep: AtomicU64,
    sweep_cursor: AtomicUsize,
}

fn shard_of(key: &FlowKey) -> usize {
    let mut h = FxHasher::default();
    key.hash(&mut h);
    // The high bits: FxHash's low bits are weak for small keys.
    (h.finish() >> 58) as usize % SHARDS
}

impl Conntrack {
    /// A table of at most `capacity` entries (two per translated flow).
    pub fn new(capacity: usize) -> Conntrack {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        let shards = (0..SHARDS)
            .map(|_| Mutex::new(Map::with_capacity_and_hasher(per_shard, Default::default())))
            .collect();
        Conntrack {
            shards,
            per_shard,
            inserts: AtomicU64::new(0),
            insert_failed: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            last_sweep: AtomicU64::new(0),
            sweep_cursor: AtomicUsize::new(0),
        }
    }

    fn shard(&self, key: &FlowKey) -> std::sync::MutexGuard<'_, Map> {
        self.shards[shard_of(key)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The live entry of `key` at `now`, its timeout moved on by a packet
    /// with TCP `flags` (0 for UDP) going its way.
    pub fn touch(&self, key: &FlowKey, now: u64, flags: u8) -> Option<Entry> {
        let mut shard = self.shard(key);
        let e = shard.get_mut(key)?;
        if e.deadline <= now {
            return None;
        }
        if key.proto == PROTO_TCP {
            e.state = next_state(e.state, e.reply, flags);
        }
        e.deadline = now.saturating_add(timeout(key.proto, e.state));
        Some(*e)
    }

    /// The live entry of `key` at `now`, untouched.
    pub fn get(&self, key: &FlowKey, now: u64) -> Option<Entry> {
        self.shard(key)
            .get(key)
            .copied()
            .filter(|e| e.deadline > now)
    }

    /// Track a new flow: `forward` (as the client sent it) rewritten to
    /// `to`, and the reply direction that implies. `false` when a shard is
    /// full (nothing is kept then).
    pub fn insert_flow(
        &self,
        forward: FlowKey,
        to: Translation,
        (service, via): (u64, Option<[u8; 6]>),
        now: u64,
        flags: u8,
    ) -> bool {
        let reply = FlowKey {
            policy: forward.policy,
            proto: forward.proto,
            src: to.dst.ip,
            sport: to.dst.port,
            dst: to.src.ip,
            dport: to.src.port,
        };
        let back = Translation {
            src: Endpoint {
                ip: forward.dst,
                port: forward.dport,
            },
            dst: Endpoint {
                ip: forward.src,
                port: forward.sport,
            },
        };
        let state = next_state(FlowState::Opening, false, flags);
        let deadline = now.saturating_add(timeout(forward.proto, state));
        let entry = |translation, peer, reply: bool| Entry {
            translation,
            service,
            peer,
            reply,
            via: via.filter(|_| reply),
            state,
            deadline,
        };
        if !self.put(forward, entry(to, reply, false), now) {
            return false;
        }
        if !self.put(reply, entry(back, forward, true), now) {
            self.shard(&forward).remove(&forward);
            return false;
        }
        true
    }

    /// Track a flow network policy allowed (`forward.policy` set): both
    /// directions, untranslated, so its replies pass. `false` when a shard
    /// is full.
    pub fn allow_flow(&self, forward: FlowKey, now: u64, flags: u8) -> bool {
        let same = Translation {
            src: Endpoint {
                ip: forward.src,
                port: forward.sport,
            },
            dst: Endpoint {
                ip: forward.dst,
                port: forward.dport,
            },
        };
        self.insert_flow(forward, same, (0, None), now, flags)
    }

    /// Remember that `client` of service port `service` went to `backend`
    /// (session affinity), for `timeout_ns`.
    pub fn set_affinity(&self, key: FlowKey, backend: Endpoint, service: u64, until: u64) -> bool {
        let e = Entry {
            translation: Translation {
                src: backend,
                dst: backend,
            },
            service,
            peer: key,
            reply: false,
            via: None,
            state: FlowState::Established,
            deadline: until,
        };
        self.put(key, e, until.saturating_sub(1))
    }

    fn put(&self, key: FlowKey, entry: Entry, now: u64) -> bool {
        let mut shard = self.shard(&key);
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            let before = shard.len();
            shard.retain(|_, e| e.deadline > now);
            self.expired
                .fetch_add((before - shard.len()) as u64, Ordering::Relaxed);
            if shard.len() >= self.per_shard {
                self.insert_failed.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        }
        shard.insert(key, entry);
        self.inserts.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Forget a flow (both directions), as when its backend went away.
    pub fn remove_flow(&self, key: &FlowKey) {
        let peer = self.shard(key).remove(key).map(|e| e.peer);
        if let Some(p) = peer {
            self.shard(&p).remove(&p);
        }
    }

    /// Sweep the next shard of expired entries, if no worker did so for
    /// [`SWEEP_EVERY_NS`]. Returns how many went.
    pub fn sweep_step(&self, now: u64) -> usize {
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now.saturating_sub(last) < SWEEP_EVERY_NS
            || self
                .last_sweep
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return 0;
        }
        let i = self.sweep_cursor.fetch_add(1, Ordering::Relaxed) % SHARDS;
        let mut shard = self.shards[i].lock().unwrap_or_else(|p| p.into_inner());
        let before = shard.len();
        shard.retain(|_, e| e.deadline > now);
        let gone = before - shard.len();
        self.expired.fetch_add(gone as u64, Ordering::Relaxed);
        gone
    }

    pub fn stats(&self) -> ConntrackStats {
        let entries = self
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len() as u64)
            .sum();
        ConntrackStats {
            capacity: (self.per_shard * SHARDS) as u64,
            entries,
            inserts: self.inserts.load(Ordering::Relaxed),
            insert_failed: self.insert_failed.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
        }
    }
}

/// The state after a packet with TCP `flags`, `reply` saying whether it
/// goes the replies' way.
fn next_state(state: FlowState, reply: bool, flags: u8) -> FlowState {
    if flags & (TCP_FIN | TCP_RST) != 0 {
        return FlowState::Closing;
    }
    match state {
        FlowState::Closing => FlowState::Closing,
        FlowState::Opening if reply || (flags & TCP_ACK != 0 && flags & TCP_SYN == 0) => {
            FlowState::Established
        }
        s => s,
    }
}

fn timeout(proto: u8, state: FlowState) -> u64 {
    match (proto, state) {
        (PROTO_TCP, FlowState::Opening) => TCP_SYN_TIMEOUT_NS,
        (PROTO_TCP, FlowState::Established) => TCP_ESTABLISHED_TIMEOUT_NS,
        (PROTO_TCP, FlowState::Closing) => TCP_CLOSING_TIMEOUT_NS,
        _ => UDP_TIMEOUT_NS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sport: u16) -> FlowKey {
        FlowKey {
            policy: false,
            proto: PROTO_TCP,
            src: 0x0a58_0002,
            dst: 0x0a60_0001,
            sport,
            dport: 80,
        }
    }

    fn to_backend() -> Translation {
        Translation {
            src: Endpoint {
                ip: 0x0a58_0002,
                port: 40000,
            },
            dst: Endpoint {
                ip: 0x0a58_0003,
                port: 8080,
            },
        }
    }

    #[test]
    fn a_flow_is_found_both_ways_and_expires_by_its_state() {
        let ct = Conntrack::new(1024);
        let k = key(40000);
        assert!(ct.insert_flow(k, to_backend(), (7, None), 0, TCP_SYN));
        let fwd = ct.get(&k, 1).unwrap();
        assert_eq!(fwd.translation, to_backend());
        assert_eq!(fwd.state, FlowState::Opening);
        let reply = fwd.peer;
        assert_eq!((reply.src, reply.sport), (0x0a58_0003, 8080));
        let back = ct.touch(&reply, 2, TCP_SYN | TCP_ACK).unwrap();
        assert!(back.reply);
        assert_eq!(
            back.translation.src,
            Endpoint {
                ip: 0x0a60_0001,
                port: 80
            }
        );
        assert_eq!(back.state, FlowState::Established);
        assert_eq!(back.deadline, 2 + TCP_ESTABLISHED_TIMEOUT_NS);
        // The forward entry still has its SYN timeout until it is touched.
        assert!(ct.get(&k, TCP_SYN_TIMEOUT_NS + 1).is_none());
        let closing = ct.touch(&reply, 3, TCP_FIN | TCP_ACK).unwrap();
        assert_eq!(closing.deadline, 3 + TCP_CLOSING_TIMEOUT_NS);
        assert!(ct.get(&reply, 3 + TCP_CLOSING_TIMEOUT_NS).is_none());
        assert_eq!(ct.stats().entries, 2);
        ct.remove_flow(&k);
        assert_eq!(ct.stats().entries, 0);
    }

    #[test]
    fn the_table_is_bounded_and_sweeps_what_expired() {
        let ct = Conntrack::new(SHARDS * 2);
        let mut ok = 0;
        for p in 0..2000u16 {
            if ct.insert_flow(
                key(p),
                Translation {
                    src: Endpoint { ip: 1, port: p },
                    ..to_backend()
                },
                (1, None),
                0,
                TCP_SYN,
            ) {
                ok += 1;
            }
        }
        let s = ct.stats();
        assert!(s.entries <= s.capacity, "{s:?}");
        assert!(s.insert_failed > 0 && ok < 2000, "{s:?}");
        // Later, everything has expired: sweeping empties shard by shard,
        // at most one shard per SWEEP_EVERY_NS.
        let late = TCP_SYN_TIMEOUT_NS + 1;
        let mut gone = 0;
        for i in 0..SHARDS as u64 {
            gone += ct.sweep_step(late + i * SWEEP_EVERY_NS);
            assert_eq!(ct.sweep_step(late + i * SWEEP_EVERY_NS + 1), 0);
        }
        assert_eq!(ct.stats().entries, 0);
        assert_eq!(gone as u64, s.entries);
        // And a full shard makes room from its expired entries on insert.
        assert!(ct.insert_flow(key(1), to_backend(), (1, None), late, TCP_SYN));
    }

    #[test]
    fn udp_flows_live_sixty_seconds_from_their_last_packet() {
        let ct = Conntrack::new(64);
        let k = FlowKey {
            proto: PROTO_UDP,
            ..key(5353)
        };
        assert!(ct.insert_flow(k, to_backend(), (1, None), 0, 0));
        assert!(ct.touch(&k, 50 * SECOND, 0).is_some());
        assert!(ct.get(&k, 100 * SECOND).is_some());
        assert!(ct.get(&k, 111 * SECOND).is_none());
    }
}
