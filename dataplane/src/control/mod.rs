//! The control side: table-API state, ports and workers, wired together.
//!
//! [`Dataplane`] owns the workers (threads + command channels), the ports
//! (attachment + one queue per worker, made by a [`PortBackend`]) and the
//! table-API state (node settings, endpoints, routes). Every update follows
//! one order so traffic never meets a half-made port:
//!
//! 1. open new ports (attach, sockets) and hand the queues to the workers,
//!    then wait until every worker has them (a barrier);
//! 2. build and publish the new tables (naming the new ports, no longer
//!    naming removed ones);
//! 3. tell the workers to drop their queues on removed ports, wait for all
//!    of them, then detach. Only then is a removed port id free for reuse:
//!    workers load the tables once per batch and apply commands between
//!    batches, so after the barrier no worker holds a snapshot naming it.
//!
//! `Applied { generation }` is answered after step 3, so when ferryd's ADD
//! returns the pod's port is live in every worker.
//!
//! Only the control thread(s) touch this state (behind the server's Mutex);
//! workers see only the published tables and their command channel.

pub mod server;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender};
use ferry_api::table::{
    Attachment, Endpoint, EndpointPolicy, MissingPort, Neighbour, NextHop, NodeSettings, Overlay,
    PortStats, Request, Response, Route, ServicePort, Stats, TableDump, API_VERSION,
};
use ipnet::IpNet;

use crate::core::conntrack::Conntrack;
use crate::core::service::ServiceTable;
use crate::core::tables::{Links, Policies, PortId, Services, TableHandle, Tables};
use crate::engine::counters::{
    new_port_counters, new_worker_counters, PortCounters, WorkerCounters,
};
use crate::engine::worker::{self, Worker, WorkerCmd, WorkerConfig, WorkerFailure};
use crate::io::poll::Waker;
use crate::io::port::{PortBackend, PortKind, PortSpec, UplinkSpec};

/// How long the control thread waits for every worker to apply a command.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(5);

/// Worker settings of a dataplane.
#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    pub workers: usize,
    /// Core of worker `i`; `None` leaves it unpinned.
    pub cpus: Vec<Option<usize>>,
    pub batch: usize,
    pub idle_timeout: Duration,
    /// See [`WorkerConfig::idle_spin`].
    pub idle_spin: Duration,
    /// See [`WorkerConfig::poll_mode`].
    pub poll_mode: worker::PollMode,
    /// Entries of the connection tracking table (two per translated or
    /// policed flow), allocated when the first service or endpoint policy
    /// arrives.
    pub conntrack_max: usize,
}

/// Cilium's `bpf-ct-global-any-max` default.
pub const DEFAULT_CONNTRACK_MAX: usize = 262_144;

/// Where `workers` workers run by default on `ncores` cores: worker `i` on
/// core `i` while the workers leave a core to the pods; not pinned when
/// they would take every core. A pinned worker whose core a pod sending
/// at full rate shares is descheduled for milliseconds, its fill ring runs
/// dry and the kernel drops at the socket; unpinned, the scheduler moves
/// it away. Measured on 2 cores, one pod's 64 B flood: two workers pinned
/// to cores 0 and 1 forwarded 0.254 Mpps (35 % lost), unpinned 0.566, one
/// worker pinned to core 0 0.558 (perf/results/two-workers-20261207.md).
pub fn default_cpus(workers: usize, ncores: usize) -> Vec<Option<usize>> {
    if workers < ncores {
        (0..workers).map(Some).collect()
    } else {
        vec![None; workers]
    }
}

impl DataplaneConfig {
    /// `workers` workers, pinned as [`default_cpus`] says (or worker `i`
    /// to `cpus[i % cpus.len()]` when a list is given).
    pub fn new(workers: usize, cpus: Option<&[usize]>, batch: usize) -> Self {
        let workers = workers.max(1);
        let ncores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpus = match cpus {
            Some(list) if !list.is_empty() => {
                (0..workers).map(|i| Some(list[i % list.len()])).collect()
            }
            _ => default_cpus(workers, ncores),
        };
        DataplaneConfig {
            workers,
            cpus,
            batch,
            idle_timeout: Duration::from_millis(10),
            idle_spin: Duration::ZERO,
            poll_mode: worker::PollMode::Interrupt,
            conntrack_max: DEFAULT_CONNTRACK_MAX,
        }
    }
}

/// Errors of the control side that are not about one port.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("starting worker {worker}: {source}")]
    Spawn {
        worker: usize,
        source: std::io::Error,
    },
    #[error("worker {worker} has stopped")]
    WorkerGone { worker: usize },
    #[error("worker(s) {workers:?} did not apply the update within {BARRIER_TIMEOUT:?}")]
    BarrierTimeout { workers: Vec<usize> },
}

struct WorkerHandle<Q> {
    cmds: Sender<WorkerCmd<Q>>,
    /// Written after every command, so an idle worker takes it at once.
    waker: Option<Arc<Waker>>,
    counters: Arc<WorkerCounters>,
    cpu: Option<usize>,
    join: Option<JoinHandle<()>>,
}

impl<Q> WorkerHandle<Q> {
    /// Queue `cmd` for the worker and wake it.
    fn send(&self, cmd: WorkerCmd<Q>) -> Result<(), channel::SendError<WorkerCmd<Q>>> {
        self.cmds.send(cmd)?;
        if let Some(w) = &self.waker {
            w.wake();
        }
        Ok(())
    }
}

struct PortEntry<A> {
    id: PortId,
    /// Endpoint id, or "host" for the host port, "uplink" for the uplink.
    label: String,
    /// What it was opened as: a port whose spec changes is reopened.
    spec: PortSpec,
    counters: Vec<Arc<PortCounters>>,
    /// Dropped last, after the workers let go of their queues.
    _attachment: A,
}

/// The desired table state, as the table API describes it.
#[derive(Clone, Default)]
struct State {
    node: Option<NodeSettings>,
    endpoints: BTreeMap<String, Endpoint>,
    routes: BTreeMap<IpNet, Route>,
    services: BTreeMap<String, ServicePort>,
    /// Endpoint policies by endpoint id, shared with the tables built from
    /// them (a request clones the state, a publish takes every policy).
    policies: BTreeMap<String, Arc<EndpointPolicy>>,
}

impl State {
    /// Port name -> (label, what to open) of every port this state needs.
    fn ports(&self) -> BTreeMap<String, (String, PortSpec)> {
        let mut out = BTreeMap::new();
        if let Some(hp) = self.node.as_ref().and_then(|n| n.host_port.as_ref()) {
            out.insert(
                hp.ifname.clone(),
                ("host".to_string(), PortSpec::host_veth(&hp.ifname)),
            );
        }
        if let Some((node, up)) = self
            .node
            .as_ref()
            .and_then(|n| Some((n, n.uplink.as_ref()?)))
        {
            let spec = PortSpec {
                name: up.ifname.clone(),
                kind: PortKind::Uplink(uplink_spec(node, up, &self.services)),
            };
            out.insert(up.ifname.clone(), (UPLINK_LABEL.to_string(), spec));
        }
        for ep in self.endpoints.values() {
            out.entry(ep.host_ifname.clone())
                .or_insert_with(|| (ep.id.clone(), port_spec(ep)));
        }
        out
    }

    /// The peer nodes the routes name (IPv4: the overlay's family), each
    /// once.
    fn peers(&self) -> Vec<std::net::Ipv4Addr> {
        let set: BTreeSet<_> = self
            .routes
            .values()
            .filter_map(|r| match r.next_hop {
                NextHop::Node(std::net::IpAddr::V4(a)) => Some(a),
                _ => None,
            })
            .collect();
        set.into_iter().collect()
    }
}

/// The label of the uplink port (`PortStats::endpoint`, `MissingPort`).
pub const UPLINK_LABEL: &str = "uplink";

/// What the uplink's classifier must send to the sockets (a change of
/// the node ports alone is made in place, [`PortBackend::update_node_ports`]).
fn uplink_spec(
    node: &NodeSettings,
    up: &ferry_api::table::Uplink,
    services: &BTreeMap<String, ServicePort>,
) -> UplinkSpec {
    let mut node_ports: Vec<(u8, u16)> = services
        .values()
        .filter(|s| s.vip.is_ipv4())
        .filter_map(|s| Some((s.protocol.number(), s.node_port?)))
        .collect();
    node_ports.sort_unstable();
    node_ports.dedup();
    match up.overlay {
        Overlay::Vxlan { port, .. } => UplinkSpec {
            address: up.address,
            vxlan_port: Some(port),
            local_cidrs: Vec::new(),
            node_ports,
            set_channels: up.set_channels,
        },
        Overlay::Direct => UplinkSpec {
            address: up.address,
            vxlan_port: None,
            local_cidrs: node.pod_cidrs.iter().map(|c| c.trunc()).collect(),
            node_ports,
            set_channels: up.set_channels,
        },
    }
}

/// How the port of `ep` is opened: its tap inside the pod namespace, or
/// its host veth here.
fn port_spec(ep: &Endpoint) -> PortSpec {
    match ep.attachment {
        Attachment::Veth => PortSpec::pod_veth(&ep.host_ifname),
        Attachment::Tap => PortSpec {
            name: ep.host_ifname.clone(),
            kind: PortKind::Tap {
                netns: ep.netns.clone(),
                ifname: ep.pod_ifname.clone(),
                netns_id: ep.netns_id,
            },
        },
    }
}

/// The result of one update.
struct Outcome {
    generation: u64,
    /// Endpoints left out because their port could not be opened (only
    /// a non-strict update, i.e. `Sync`, has any).
    failures: Vec<MissingPort>,
}

/// The dataplane: workers, ports, tables.
pub struct Dataplane<B: PortBackend> {
    backend: B,
    workers: Vec<WorkerHandle<B::Queue>>,
    tables: Arc<TableHandle>,
    stop: Arc<AtomicBool>,
    generation: u64,
    state: State,
    ports: BTreeMap<String, PortEntry<B::Attachment>>,
    free_ids: BTreeSet<PortId>,
    next_id: PortId,
    /// Workers that ended unasked ([`Dataplane::failures`]).
    failures: Receiver<WorkerFailure>,
    /// The uplink's MAC and MTU and the peers' MACs, as last resolved.
    links: Links,
    /// How each peer is reached, as last resolved (for the dump).
    neighbours: Vec<Neighbour>,
    /// The service ports the tables were last built with, and their table.
    built_services: (BTreeMap<String, ServicePort>, Arc<ServiceTable>),
    /// Made with the first service or endpoint policy, kept for the
    /// dataplane's life.
    conntrack: Option<Arc<Conntrack>>,
    conntrack_max: usize,
}

impl<B: PortBackend> Dataplane<B> {
    /// Start the workers (no ports yet, empty tables).
    pub fn start(backend: B, cfg: &DataplaneConfig) -> Result<Self, ControlError> {
        let tables = Arc::new(TableHandle::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::with_capacity(cfg.workers);
        let (failed, failures) = channel::unbounded();
        for id in 0..cfg.workers {
            let (tx, rx) = channel::unbounded();
            let counters = Arc::new(new_worker_counters());
            let cpu = cfg.cpus.get(id).copied().flatten();
            let wcfg = WorkerConfig {
                id,
                batch: cfg.batch,
                idle_timeout: cfg.idle_timeout,
                idle_spin: cfg.idle_spin,
                poll_mode: cfg.poll_mode,
                cpu,
            };
            let waker = match Waker::new() {
                Ok(w) => Some(Arc::new(w)),
                Err(e) => {
                    log::warn!("worker {id}: no eventfd ({e}); commands wait for its idle timeout");
                    None
                }
            };
            let mut w = Worker::<B::Queue>::new(
                wcfg,
                Arc::clone(&tables),
                rx,
                Arc::clone(&counters),
                Arc::clone(&stop),
            );
            if let Some(waker) = &waker {
                w = w.with_waker(Arc::clone(waker));
            }
            let join = worker::spawn(w, failed.clone())
                .map_err(|source| ControlError::Spawn { worker: id, source })?;
            workers.push(WorkerHandle {
                cmds: tx,
                waker,
                counters,
                cpu,
                join: Some(join),
            });
        }
        Ok(Dataplane {
            backend,
            workers,
            tables,
            stop,
            generation: 0,
            state: State::default(),
            ports: BTreeMap::new(),
            free_ids: BTreeSet::new(),
            next_id: 0,
            failures,
            links: Links::default(),
            neighbours: Vec::new(),
            built_services: (BTreeMap::new(), Arc::new(ServiceTable::default())),
            conntrack: None,
            conntrack_max: cfg.conntrack_max.max(1),
        })
    }

    /// Where a worker that panics or ends unasked is reported, once. The
    /// failure policy is the caller's: `ferry-dataplane` exits non-zero
    /// (its supervisor restarts it and ferryd resyncs it), because a
    /// dataplane short of a worker has lost that worker's queues and would
    /// fail every later update at the barrier.
    pub fn failures(&self) -> Receiver<WorkerFailure> {
        self.failures.clone()
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The published tables (what the workers see).
    pub fn tables(&self) -> Arc<TableHandle> {
        Arc::clone(&self.tables)
    }

    /// Answer one table-API request (Hello included; the server checks that
    /// a connection said Hello first).
    pub fn handle(&mut self, req: Request) -> Response {
        match req {
            Request::Hello { api_version } if api_version == API_VERSION => Response::Hello {
                api_version: API_VERSION,
                workers: self.workers.len() as u32,
                mtu_limits: Some(self.backend.mtu_limits()),
            },
            Request::Hello { api_version } => Response::Error {
                message: format!(
                    "unsupported api_version {api_version}: this dataplane speaks {API_VERSION}"
                ),
            },
            Request::Sync {
                node,
                endpoints,
                routes,
            } => {
                let next = State {
                    node: Some(node),
                    endpoints: endpoints.into_iter().map(|e| (e.id.clone(), e)).collect(),
                    routes: routes.into_iter().map(|r| (r.prefix.trunc(), r)).collect(),
                    services: self.state.services.clone(),
                    policies: self.state.policies.clone(),
                };
                self.respond(next, false)
            }
            Request::UpsertEndpoint { endpoint } => {
                let mut next = self.state.clone();
                next.endpoints.insert(endpoint.id.clone(), endpoint);
                self.respond(next, true)
            }
            Request::RemoveEndpoint { id } => {
                let mut next = self.state.clone();
                next.endpoints.remove(&id);
                self.respond(next, true)
            }
            Request::UpsertRoute { route } => {
                let mut next = self.state.clone();
                next.routes.insert(route.prefix.trunc(), route);
                self.respond(next, true)
            }
            Request::RemoveRoute { prefix } => {
                let mut next = self.state.clone();
                next.routes.remove(&prefix.trunc());
                self.respond(next, true)
            }
            Request::SyncServices { services } => {
                let mut next = self.state.clone();
                next.services = services.into_iter().map(|s| (s.id.clone(), s)).collect();
                self.respond(next, true)
            }
            Request::UpsertService { service } => {
                let mut next = self.state.clone();
                next.services.insert(service.id.clone(), service);
                self.respond(next, true)
            }
            Request::RemoveService { id } => {
                let mut next = self.state.clone();
                next.services.remove(&id);
                self.respond(next, true)
            }
            Request::SyncPolicies { policies } => {
                let mut next = self.state.clone();
                next.policies = policies
                    .into_iter()
                    .map(|p| (p.endpoint.clone(), Arc::new(p)))
                    .collect();
                self.respond(next, true)
            }
            Request::UpsertPolicy { policy } => {
                let mut next = self.state.clone();
                next.policies
                    .insert(policy.endpoint.clone(), Arc::new(policy));
                self.respond(next, true)
            }
            Request::RemovePolicy { endpoint } => {
                let mut next = self.state.clone();
                next.policies.remove(&endpoint);
                self.respond(next, true)
            }
            Request::Stats => Response::Stats(self.stats()),
            Request::Tables => Response::Tables(Box::new(self.dump())),
        }
    }

    /// The services part of the tables for `state`: the service table
    /// rebuilt only when the service ports changed, the connection table
    /// made with the first one.
    fn services_for(&mut self, state: &State) -> Option<Services> {
        if state.services != self.built_services.0 {
            let ports: Vec<ServicePort> = state.services.values().cloned().collect();
            self.built_services = (
                state.services.clone(),
                Arc::new(ServiceTable::build(&ports)),
            );
        }
        if state.services.is_empty() {
            return None;
        }
        Some(Services {
            table: Arc::clone(&self.built_services.1),
            conntrack: self.conntrack(),
        })
    }

    /// The one connection table, made when services or policies first
    /// need it.
    fn conntrack(&mut self) -> Arc<Conntrack> {
        let max = self.conntrack_max;
        let ct = self.conntrack.get_or_insert_with(|| {
            log::info!("connection tracking: {max} entries");
            Arc::new(Conntrack::new(max))
        });
        Arc::clone(ct)
    }

    /// The policy part of the tables for `state`: each policy whose
    /// endpoint has a port, by that port.
    fn policies_for(&mut self, state: &State, node: &NodeSettings) -> Option<Policies> {
        let by_port: Vec<(PortId, Arc<EndpointPolicy>)> = state
            .policies
            .values()
            .filter(|p| p.ingress.is_some() || p.egress.is_some())
            .filter_map(|p| {
                let ep = state.endpoints.get(&p.endpoint)?;
                let port = self.ports.get(&ep.host_ifname)?.id;
                Some((port, Arc::clone(p)))
            })
            .collect();
        if by_port.is_empty() {
            return None;
        }
        let mut node_addrs = node.gateways.clone();
        node_addrs.extend(node.uplink.as_ref().map(|u| IpAddr::V4(u.address)));
        Some(Policies::new(by_port, node_addrs, self.conntrack()))
    }

    fn respond(&mut self, next: State, strict: bool) -> Response {
        match self.apply(next, strict) {
            Ok(Outcome {
                generation,
                failures,
            }) => Response::Applied {
                generation,
                missing: failures,
            },
            Err(message) => Response::Error { message },
        }
    }

    /// Make the ports and tables match `next`. With `strict`, a port that
    /// cannot be opened fails the whole update and nothing changes;
    /// otherwise endpoints on such ports are left out and reported.
    fn apply(&mut self, mut next: State, strict: bool) -> Result<Outcome, String> {
        let desired = next.ports();
        // The uplink's node ports change with the services: its
        // classifier's map is updated in place, without a reopen.
        for (name, p) in self.ports.iter_mut() {
            let Some((_, spec)) = desired.get(name) else {
                continue;
            };
            if let (PortKind::Uplink(want), PortKind::Uplink(have)) = (&spec.kind, &mut p.spec.kind)
            {
                let same_but_ports = UplinkSpec {
                    node_ports: want.node_ports.clone(),
                    ..have.clone()
                } == *want;
                if want.node_ports != have.node_ports && same_but_ports {
                    B::update_node_ports(&mut p._attachment, &want.node_ports)
                        .map_err(|e| e.to_string())?;
                    log::info!("{name}: node ports {:?}", want.node_ports);
                    have.node_ports.clone_from(&want.node_ports);
                }
            }
        }
        // A port whose spec changed (the uplink's other classifier
        // settings) is closed before it is opened again: one interface
        // takes one program and one socket per queue.
        let changed: Vec<String> = self
            .ports
            .iter()
            .filter(|(name, p)| desired.get(*name).is_some_and(|(_, spec)| *spec != p.spec))
            .map(|(name, _)| name.clone())
            .collect();
        if !changed.is_empty() {
            let mut without = self.state.clone();
            without
                .endpoints
                .retain(|_, ep| !changed.contains(&ep.host_ifname));
            if let Some(node) = without.node.as_mut() {
                if node
                    .uplink
                    .as_ref()
                    .is_some_and(|u| changed.contains(&u.ifname))
                {
                    node.uplink = None;
                }
            }
            self.publish_state(&without);
            self.retire(changed)?;
        }
        let mut opened = Vec::new();
        let mut failures = Vec::new();
        for (ifname, (label, spec)) in &desired {
            if let Some(p) = self.ports.get_mut(ifname) {
                p.label.clone_from(label);
                continue;
            }
            match self.backend.open(spec, self.workers.len()) {
                Ok((attachment, queues)) => opened.push((
                    ifname.clone(),
                    label.clone(),
                    spec.clone(),
                    attachment,
                    queues,
                )),
                Err(e) => {
                    log::warn!("{e}");
                    failures.push((ifname.clone(), e));
                }
            }
        }
        if strict && !failures.is_empty() {
            // `opened` is dropped here: its attachments detach again.
            return Err(failures
                .into_iter()
                .map(|(_, e)| e.to_string())
                .collect::<Vec<_>>()
                .join("; "));
        }
        // Every port that failed is named with what it was for (an
        // endpoint id, or "host" for the host port).
        let missing: Vec<MissingPort> = failures
            .iter()
            .map(|(ifname, e)| MissingPort {
                endpoint: desired
                    .get(ifname)
                    .map(|(label, _)| label.clone())
                    .unwrap_or_default(),
                port: ifname.clone(),
                error: e.to_string(),
            })
            .collect();
        next.endpoints
            .retain(|_, ep| !failures.iter().any(|(n, _)| *n == ep.host_ifname));
        if let Some(node) = next.node.as_mut() {
            if node
                .uplink
                .as_ref()
                .is_some_and(|u| failures.iter().any(|(n, _)| *n == u.ifname))
            {
                // Kept in the state (a later Sync retries it); the tables
                // see no uplink, so traffic to peers counts `no_uplink`.
                log::warn!("the uplink could not be opened; peers are unreachable");
            }
        }

        // 1. New ports to the workers.
        let added = !opened.is_empty();
        for (ifname, label, spec, attachment, queues) in opened {
            let id = self.free_ids.pop_first().unwrap_or_else(|| {
                self.next_id += 1;
                self.next_id - 1
            });
            let counters: Vec<_> = (0..self.workers.len())
                .map(|_| Arc::new(new_port_counters()))
                .collect();
            for ((w, queue), c) in self.workers.iter().zip(queues).zip(&counters) {
                // A dead worker is reported by the barrier below.
                let _ = w.send(WorkerCmd::AddPort {
                    port: id,
                    queue,
                    counters: Arc::clone(c),
                });
            }
            log::info!("port {id}: {ifname} ({label})");
            self.ports.insert(
                ifname,
                PortEntry {
                    id,
                    label,
                    spec,
                    counters,
                    _attachment: attachment,
                },
            );
        }
        if added {
            self.barrier().map_err(|e| e.to_string())?;
        }

        // 2. Publish.
        self.state = next;
        self.refresh_links();
        let state = self.state.clone();
        self.publish_state(&state);

        // 3. Retire ports nobody names any more.
        let gone: Vec<String> = self
            .ports
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect();
        self.retire(gone)?;
        Ok(Outcome {
            generation: self.generation,
            failures: missing,
        })
    }

    /// Withdraw the ports `names` from the workers, wait for all of them,
    /// then detach (dropping the entries) and free their ids.
    fn retire(&mut self, names: Vec<String>) -> Result<(), String> {
        if names.is_empty() {
            return Ok(());
        }
        let mut retired = Vec::new();
        for ifname in names {
            if let Some(p) = self.ports.remove(&ifname) {
                for w in &self.workers {
                    let _ = w.send(WorkerCmd::RemovePort { port: p.id });
                }
                log::info!("port {}: {ifname} removed", p.id);
                retired.push(p);
            }
        }
        self.barrier().map_err(|e| e.to_string())?;
        let t = Instant::now();
        for p in retired {
            self.free_ids.insert(p.id);
            // Dropping the entry detaches the XDP program.
        }
        log::debug!("retired ports detached in {:?}", t.elapsed());
        Ok(())
    }

    /// Build the tables of `state` with the ports and links as they are
    /// and publish them as a new generation.
    fn publish_state(&mut self, state: &State) {
        self.generation += 1;
        let endpoints: Vec<Endpoint> = state.endpoints.values().cloned().collect();
        let routes: Vec<Route> = state.routes.values().cloned().collect();
        let node = state.node.clone().unwrap_or_else(empty_node);
        let services = self.services_for(state);
        let policy = self.policies_for(state, &node);
        let ports = &self.ports;
        let tables = Tables::build_with(
            self.generation,
            &node,
            &endpoints,
            &routes,
            |name| ports.get(name).map(|p| p.id),
            &self.links,
        )
        .with_services(services)
        .with_policy(policy);
        self.tables.publish(tables);
    }

    /// Ask the I/O layer again about the uplink and how each peer is
    /// reached; `true` when that changed what the tables hold.
    fn refresh_links(&mut self) -> bool {
        let before = self.links.clone();
        let Some(up) = self.state.node.as_ref().and_then(|n| n.uplink.clone()) else {
            self.links = Links::default();
            self.neighbours.clear();
            return before.uplink.is_some();
        };
        let neighbours = self
            .backend
            .resolve_neighbours(&up.ifname, &self.state.peers());
        // Direct routing sends to the peer itself: a peer the kernel routes
        // through a gateway is off-link, a configuration error ferryd
        // refuses; its frames are dropped `neighbour_unresolved`.
        let direct = matches!(up.overlay, Overlay::Direct);
        self.links = Links {
            uplink: self.backend.link_info(&up.ifname).map(|l| (l.mac, l.mtu)),
            uplink_frame_mtu: self.backend.mtu_limits().uplink.unwrap_or(0),
            neighbours: neighbours
                .iter()
                .filter(|n| !direct || n.next_hop == n.node)
                .filter_map(|n| match (n.node, n.mac) {
                    (std::net::IpAddr::V4(node), Some(mac)) => Some((node, mac)),
                    _ => None,
                })
                .collect(),
        };
        if neighbours != self.neighbours {
            for n in &neighbours {
                match n.mac {
                    Some(mac) => {
                        log::info!("peer {} via {} at {mac} ({})", n.node, n.next_hop, n.state)
                    }
                    None => log::warn!("peer {} via {}: {}", n.node, n.next_hop, n.state),
                }
            }
            self.neighbours = neighbours;
        }
        before.uplink != self.links.uplink || before.neighbours != self.links.neighbours
    }

    /// Re-resolve the uplink and the peers (the server calls this about
    /// twice a second) and publish new tables if that changed them.
    pub fn refresh_neighbours(&mut self) {
        if self.refresh_links() {
            let state = self.state.clone();
            self.publish_state(&state);
        }
    }

    /// Wait until every worker applied every command sent before.
    fn barrier(&self) -> Result<(), ControlError> {
        let (tx, rx) = channel::bounded(self.workers.len());
        for (i, w) in self.workers.iter().enumerate() {
            w.send(WorkerCmd::Barrier { ack: tx.clone() })
                .map_err(|_| ControlError::WorkerGone { worker: i })?;
        }
        drop(tx);
        let deadline = Instant::now() + BARRIER_TIMEOUT;
        let mut pending: BTreeSet<usize> = (0..self.workers.len()).collect();
        while !pending.is_empty() {
            match rx.recv_deadline(deadline) {
                Ok(id) => {
                    pending.remove(&id);
                }
                Err(channel::RecvTimeoutError::Timeout) => {
                    return Err(ControlError::BarrierTimeout {
                        workers: pending.into_iter().collect(),
                    })
                }
                Err(channel::RecvTimeoutError::Disconnected) => {
                    let worker = pending.first().copied().unwrap_or_default();
                    return Err(ControlError::WorkerGone { worker });
                }
            }
        }
        Ok(())
    }

    /// Counters summed over the workers.
    pub fn stats(&self) -> Stats {
        let ports = self
            .ports
            .iter()
            .map(|(name, p)| {
                let mut s = PortStats {
                    name: name.clone(),
                    endpoint: p.label.clone(),
                    // Until a worker finds the device gone under it.
                    attached: !p.counters.iter().any(|c| c.detached()),
                    mode: B::mode_of(&p._attachment),
                    ..Default::default()
                };
                for c in &p.counters {
                    c.sum_into(&mut s);
                }
                s
            })
            .collect();
        let workers = self
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| w.counters.snapshot(i as u32, w.cpu.map(|c| c as u32)))
            .collect();
        Stats {
            generation: self.generation,
            ports,
            workers,
            drop_reasons: crate::core::pipeline::DropReason::ALL
                .iter()
                .map(|r| r.name().to_string())
                .collect(),
            conntrack: self.conntrack.as_ref().map(|ct| ct.stats()),
        }
    }

    /// The table state and port ids.
    pub fn dump(&self) -> TableDump {
        TableDump {
            generation: self.generation,
            node: self.state.node.clone(),
            endpoints: self.state.endpoints.values().cloned().collect(),
            routes: self.state.routes.values().cloned().collect(),
            ports: self.ports.iter().map(|(n, p)| (n.clone(), p.id)).collect(),
            neighbours: self.neighbours.clone(),
            services: self.state.services.values().cloned().collect(),
            policies: self
                .state
                .policies
                .values()
                .map(|p| EndpointPolicy::clone(p))
                .collect(),
        }
    }

    /// Stop the workers, then detach every port.
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for (i, w) in self.workers.iter_mut().enumerate() {
            if let Some(j) = w.join.take() {
                if j.join().is_err() {
                    log::error!("worker {i} panicked");
                }
            }
        }
        self.ports.clear();
    }
}

impl<B: PortBackend> Drop for Dataplane<B> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Why the dataplane process ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// SIGINT/SIGTERM: stop in order.
    Signal(i32),
    /// A worker died: exit non-zero at once.
    WorkerFailed(WorkerFailure),
}

/// Wait for whichever comes first: a signal number on `signals` or a
/// worker failure on `failures` (see [`Dataplane::failures`]).
pub fn wait_for_end(signals: &Receiver<i32>, failures: &Receiver<WorkerFailure>) -> Ending {
    channel::select! {
        recv(signals) -> sig => match sig {
            Ok(sig) => Ending::Signal(sig),
            // The signal thread is gone: nothing can stop us in order.
            Err(_) => Ending::Signal(libc::SIGTERM),
        },
        recv(failures) -> failure => Ending::WorkerFailed(failure.unwrap_or(WorkerFailure {
            worker: 0,
            cause: "(and every other worker) ended without a word".into(),
        })),
    }
}

fn empty_node() -> NodeSettings {
    NodeSettings {
        gateways: Vec::new(),
        router_mac: ferry_api::MacAddr::ROUTER,
        pod_cidrs: Vec::new(),
        host_port: None,
        mtu: 1500,
        uplink: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_are_pinned_only_while_they_leave_the_pods_a_core() {
        assert_eq!(default_cpus(1, 2), vec![Some(0)]);
        assert_eq!(default_cpus(3, 4), vec![Some(0), Some(1), Some(2)]);
        assert_eq!(
            default_cpus(2, 2),
            vec![None, None],
            "every core a worker's"
        );
        assert_eq!(default_cpus(1, 1), vec![None]);
        assert_eq!(default_cpus(4, 2), vec![None; 4]);
        let given = DataplaneConfig::new(2, Some(&[0]), 64);
        assert_eq!(given.cpus, vec![Some(0), Some(0)], "a list is followed");
    }
    use crate::core::offload;
    use crate::core::pipeline::{fixtures, Offload};
    use crate::sim::{MemBackend, MemNetwork, MemWire};
    use ferry_api::table::{HostPort, MtuLimits, NextHop};
    use ferry_api::MacAddr;
    use std::net::Ipv4Addr;

    const GW: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
    const A: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
    const B: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 3);
    const KERNEL_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x01]);

    fn node() -> NodeSettings {
        NodeSettings {
            gateways: vec![GW.into()],
            router_mac: MacAddr::ROUTER,
            pod_cidrs: vec!["10.99.0.0/24".parse().unwrap()],
            host_port: Some(HostPort {
                ifname: "ferry0dp".into(),
                kernel_ifname: "ferry0".into(),
                kernel_mac: KERNEL_MAC,
            }),
            mtu: 1500,
            uplink: None,
        }
    }

    use ferry_api::table::Endpoint;

    fn ep(id: &str, ifname: &str, ip: std::net::Ipv4Addr) -> Endpoint {
        Endpoint::veth(id, ifname, ip)
    }

    fn start(workers: usize, net: &MemNetwork) -> Dataplane<MemBackend> {
        start_with_frames(workers, net, 256)
    }

    /// A dataplane whose queues have `frames` frames each.
    fn start_with_frames(workers: usize, net: &MemNetwork, frames: usize) -> Dataplane<MemBackend> {
        let cfg = DataplaneConfig {
            workers,
            cpus: vec![None; workers],
            batch: 64,
            idle_timeout: Duration::from_millis(1),
            idle_spin: Duration::ZERO,
            poll_mode: crate::engine::worker::PollMode::Interrupt,
            conntrack_max: 4096,
        };
        let mut backend = MemBackend::new(net.clone());
        backend.frames_per_queue = frames;
        Dataplane::start(backend, &cfg).expect("start")
    }

    fn arp_request(sender_mac: MacAddr, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
        let mut f = Vec::with_capacity(42);
        f.extend_from_slice(&[0xff; 6]);
        f.extend_from_slice(&sender_mac.0);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
        f.extend_from_slice(&sender_mac.0);
        f.extend_from_slice(&sender.octets());
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target.octets());
        f
    }

    fn echo(from: Ipv4Addr, to: Ipv4Addr, seq: u16) -> Vec<u8> {
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2(MacAddr::for_pod(from).0, MacAddr::ROUTER.0)
            .ipv4(from.octets(), to.octets(), 64)
            .icmpv4_echo_request(7, seq)
            .write(&mut f, b"ferry-test-payload")
            .unwrap();
        f
    }

    /// What `wire` sent, waiting (bounded) for at least `n` frames.
    fn sent(wire: &MemWire, n: usize) -> Vec<Vec<u8>> {
        sent_offloaded(wire, n)
            .into_iter()
            .map(|(_, f)| f)
            .collect()
    }

    /// Wait (bounded) until `done` holds: the workers run on their own
    /// threads here. Tests of what one worker pass does step a worker
    /// directly instead (`engine/tests.rs`).
    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while !done() {
            assert!(Instant::now() < deadline, "not within 3 s: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn applied(r: Response) -> u64 {
        match r {
            Response::Applied {
                generation,
                missing,
            } if missing.is_empty() => generation,
            other => panic!("expected Applied, got {other:?}"),
        }
    }

    /// A worker that panics is reported once, naming it; a dataplane shut
    /// down in order reports nothing.
    #[test]
    fn a_worker_that_panics_is_reported_and_a_clean_stop_is_not() {
        let (mut dp, wa) = pod_a_alone("fya");
        let failures = dp.failures();
        let (_signal, signals) = channel::unbounded::<i32>();
        wa.panic_on_rx();
        wa.inject(0, arp_request(MacAddr::for_pod(A), A, GW));
        let ending = std::thread::scope(|s| {
            let waiter = s.spawn(|| wait_for_end(&signals, &failures));
            let deadline = Instant::now() + Duration::from_secs(5);
            while !waiter.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert!(waiter.is_finished(), "no failure reported within 5 s");
            waiter.join().unwrap()
        });
        match ending {
            Ending::WorkerFailed(f) => {
                assert_eq!(f.worker, 0);
                assert!(f.cause.contains("panicked"), "{f}");
                assert!(f.cause.contains("MemWire fya"), "{f}");
                assert!(f.to_string().starts_with("worker 0 "), "{f}");
            }
            other => panic!("{other:?}"),
        }
        // The barrier of a later update fails instead of waiting forever.
        match dp.handle(Request::RemoveEndpoint {
            id: "a/eth0".into(),
        }) {
            Response::Error { message } => assert!(message.contains("worker 0"), "{message}"),
            other => panic!("{other:?}"),
        }
        dp.shutdown();
        assert!(failures.try_recv().is_err(), "reported once");

        let (mut dp, _wa) = pod_a_alone("fya");
        let failures = dp.failures();
        let (signal, signals) = channel::unbounded();
        signal.send(libc::SIGTERM).unwrap();
        assert_eq!(
            wait_for_end(&signals, &failures),
            Ending::Signal(libc::SIGTERM)
        );
        dp.shutdown();
        assert!(
            matches!(
                failures.try_recv(),
                Err(channel::TryRecvError::Disconnected)
            ),
            "a clean stop is no failure"
        );
    }

    #[test]
    fn hello_checks_the_api_version() {
        let net = MemNetwork::new();
        let mut dp = start(2, &net);
        assert_eq!(
            dp.handle(Request::Hello {
                api_version: API_VERSION
            }),
            Response::Hello {
                api_version: API_VERSION,
                workers: 2,
                mtu_limits: Some(MtuLimits {
                    veth: 2048 - 14,
                    tap: 65535,
                    uplink: Some(2048 - 14),
                }),
            }
        );
        match dp.handle(Request::Hello {
            api_version: API_VERSION + 1,
        }) {
            Response::Error { message } => assert!(message.contains("api_version"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sync_creates_ports_and_traffic_flows_between_pods() {
        let net = MemNetwork::new();
        let wa = net.add("fya", 1);
        let wb = net.add("fyb", 1);
        let _host = net.add("ferry0dp", 1);
        let mut dp = start(1, &net);
        let g = applied(dp.handle(Request::Sync {
            node: node(),
            endpoints: vec![ep("a/eth0", "fya", A), ep("b/eth0", "fyb", B)],
            routes: vec![],
        }));
        assert_eq!(g, 1);
        assert_eq!(
            dp.tables().generation(),
            1,
            "the tables are published before Applied"
        );
        let dump = dp.dump();
        assert_eq!(dump.ports.len(), 3);
        assert_eq!(dump.endpoints.len(), 2);

        // ARP for the gateway is answered on the ingress port.
        wa.inject(0, arp_request(MacAddr::for_pod(A), A, GW));
        let replies = sent(&wa, 1);
        assert_eq!(replies.len(), 1, "one ARP reply");
        assert_eq!(
            &replies[0][0..6],
            &MacAddr::for_pod(A).0,
            "reply to the asking pod"
        );
        assert_eq!(&replies[0][6..12], &MacAddr::ROUTER.0);
        assert_eq!(&replies[0][20..22], &[0, 2], "ARP op reply");

        // A -> B is routed: MACs rewritten, TTL decremented, copied to B's port.
        wa.inject(0, echo(A, B, 1));
        let got = sent(&wb, 1);
        assert_eq!(got.len(), 1);
        let f = &got[0];
        assert_eq!(&f[0..6], &MacAddr::for_pod(B).0);
        assert_eq!(&f[6..12], &MacAddr::ROUTER.0);
        assert_eq!(f[14 + 8], 63, "TTL decremented");
        assert_eq!(&f[14 + 12..14 + 16], &A.octets());

        let stats = dp.stats();
        let pa = stats.ports.iter().find(|p| p.name == "fya").unwrap();
        let pb = stats.ports.iter().find(|p| p.name == "fyb").unwrap();
        assert_eq!(pa.endpoint, "a/eth0");
        assert_eq!((pa.rx_frames, pa.tx_frames), (2, 1));
        assert_eq!(pb.tx_frames, 1);
        assert!(pb.tx_bytes >= 60);
        assert_eq!(stats.workers.len(), 1);
        assert_eq!(stats.workers[0].rx_frames, 2);
        assert_eq!(stats.workers[0].tx_frames, 2);
        assert!(stats.workers[0].busy_polls >= 1);
    }

    #[test]
    fn upsert_with_a_missing_interface_fails_and_changes_nothing() {
        let net = MemNetwork::new();
        net.add("fya", 1);
        net.add("ferry0dp", 1);
        let mut dp = start(1, &net);
        applied(dp.handle(Request::Sync {
            node: node(),
            endpoints: vec![ep("a/eth0", "fya", A)],
            routes: vec![],
        }));
        let before = dp.generation();
        match dp.handle(Request::UpsertEndpoint {
            endpoint: ep("b/eth0", "fymissing", B),
        }) {
            Response::Error { message } => assert!(message.contains("fymissing"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(dp.generation(), before);
        assert_eq!(dp.dump().endpoints.len(), 1);
        assert!(!dp.dump().ports.contains_key("fymissing"));

        // Sync with one bad endpoint applies the rest: a success that names
        // the endpoint left out (a pod whose namespace vanished must not
        // stop the node from syncing).
        match dp.handle(Request::Sync {
            node: node(),
            endpoints: vec![ep("a/eth0", "fya", A), ep("b/eth0", "fymissing", B)],
            routes: vec![],
        }) {
            Response::Applied {
                generation,
                missing,
            } => {
                assert_eq!(generation, before + 1);
                assert_eq!(missing.len(), 1, "{missing:?}");
                assert_eq!(missing[0].endpoint, "b/eth0");
                assert_eq!(missing[0].port, "fymissing");
                assert!(missing[0].error.contains("fymissing"), "{missing:?}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(dp.generation(), before + 1);
        assert_eq!(dp.dump().endpoints.len(), 1);
    }

    #[test]
    fn removed_ports_are_retired_and_their_ids_reused() {
        let net = MemNetwork::new();
        let wa = net.add("fya", 1);
        net.add("fyb", 1);
        net.add("fyc", 1);
        net.add("ferry0dp", 1);
        let mut dp = start(2, &net);
        applied(dp.handle(Request::Sync {
            node: node(),
            endpoints: vec![ep("a/eth0", "fya", A), ep("b/eth0", "fyb", B)],
            routes: vec![Route {
                prefix: "192.168.0.0/16".parse().unwrap(),
                next_hop: NextHop::Host,
            }],
        }));
        let id_b = dp.dump().ports["fyb"];
        let g1 = dp.generation();
        let g2 = applied(dp.handle(Request::RemoveEndpoint {
            id: "b/eth0".into(),
        }));
        assert_eq!(g2, g1 + 1);
        assert!(!dp.dump().ports.contains_key("fyb"));
        // Idempotent: removing again is fine and bumps the generation.
        assert_eq!(
            applied(dp.handle(Request::RemoveEndpoint {
                id: "b/eth0".into()
            })),
            g2 + 1
        );

        // Traffic to B now has no endpoint.
        wa.inject(0, echo(A, B, 2));
        wait_for("no_endpoint counted", || {
            port_drops(&dp, "fya").get("no_endpoint") == Some(&1)
        });

        // The freed id is reused for the next port.
        applied(dp.handle(Request::UpsertEndpoint {
            endpoint: ep("c/eth0", "fyc", B),
        }));
        assert_eq!(dp.dump().ports["fyc"], id_b);
        // Routes are kept and replaced by prefix.
        applied(dp.handle(Request::UpsertRoute {
            route: Route {
                prefix: "192.168.0.0/16".parse().unwrap(),
                next_hop: NextHop::Blackhole,
            },
        }));
        assert_eq!(dp.dump().routes.len(), 1);
        assert_eq!(dp.dump().routes[0].next_hop, NextHop::Blackhole);
        applied(dp.handle(Request::RemoveRoute {
            prefix: "192.168.0.0/16".parse().unwrap(),
        }));
        assert!(dp.dump().routes.is_empty());
    }

    #[test]
    fn a_worker_without_a_queue_on_the_egress_port_counts_no_tx_queue() {
        let net = MemNetwork::new();
        let wa = net.add("fya", 2);
        let wb = net.add("fyb", 1);
        net.add("ferry0dp", 2);
        let mut dp = start(2, &net);
        applied(dp.handle(Request::Sync {
            node: node(),
            endpoints: vec![ep("a/eth0", "fya", A), ep("b/eth0", "fyb", B)],
            routes: vec![],
        }));
        // Queue 1 of fya is worker 1's; fyb has no queue 1.
        wa.inject(1, echo(A, B, 3));
        wait_for("no_tx_queue counted", || {
            dp.stats().workers[1].drops.get("no_tx_queue") == Some(&1)
        });
        // Queue 0 goes through worker 0, which has a queue on fyb.
        wa.inject(0, echo(A, B, 4));
        assert_eq!(sent(&wb, 1).len(), 1);
        let stats = dp.stats();
        assert_eq!(
            stats.workers[1].drops.get("no_tx_queue"),
            Some(&1),
            "{stats:?}"
        );
        let pa = stats.ports.iter().find(|p| p.name == "fya").unwrap();
        assert_eq!(pa.rx_frames, 2);
        assert_eq!(pa.drops.get("no_tx_queue"), Some(&1));
    }

    /// A TCP segment from `from:sport` to `to:dport`.
    fn segment(from: Ipv4Addr, sport: u16, to: Ipv4Addr, dport: u16, syn: bool) -> Vec<u8> {
        let mut f = Vec::new();
        let b = etherparse::PacketBuilder::ethernet2(MacAddr::for_pod(from).0, MacAddr::ROUTER.0)
            .ipv4(from.octets(), to.octets(), 64)
            .tcp(sport, dport, 1, 64240);
        let b = if syn { b.syn() } else { b.ack(1) };
        b.write(&mut f, b"svc").unwrap();
        f
    }

    /// The two directions of a service flow meet the same translation
    /// though different workers get them: the client's packets arrive on
    /// queue 0 (worker 0), the backend's replies on queue 1 (worker 1).
    #[test]
    fn both_directions_of_a_service_flow_find_one_entry_across_workers() {
        use ferry_api::table::{Backend, L4Proto, ServicePort};
        let net = MemNetwork::new();
        let wa = net.add("fya", 2);
        let wb = net.add("fyb", 2);
        net.add("ferry0dp", 2);
        let mut dp = start(2, &net);
        applied(dp.handle(Request::Sync {
            node: node(),
            endpoints: vec![ep("a/eth0", "fya", A), ep("b/eth0", "fyb", B)],
            routes: vec![],
        }));
        let vip = Ipv4Addr::new(10, 96, 0, 10);
        applied(dp.handle(Request::SyncServices {
            services: vec![ServicePort {
                id: "default/web:80/TCP".into(),
                vip: vip.into(),
                port: 80,
                protocol: L4Proto::Tcp,
                backends: vec![Backend {
                    ip: B.into(),
                    port: 8080,
                }],
                affinity_timeout_s: None,
                seed: 1,
                node_port: None,
                node_local: None,
            }],
        }));
        assert_eq!(dp.dump().services.len(), 1);
        for sport in 40000..40010u16 {
            wa.inject(0, segment(A, sport, vip, 80, true));
            let to_b = sent(&wb, 1);
            let f = &to_b[0];
            assert_eq!(&f[30..34], &B.octets(), "to the backend");
            assert_eq!(u16::from_be_bytes([f[36], f[37]]), 8080);
            wb.inject(1, segment(B, 8080, A, sport, false));
            let to_a = sent(&wa, 1);
            let r = &to_a[0];
            assert_eq!(&r[26..30], &vip.octets(), "from the ClusterIP");
            assert_eq!(u16::from_be_bytes([r[34], r[35]]), 80);
            assert_eq!(u16::from_be_bytes([r[36], r[37]]), sport);
        }
        let s = dp.stats();
        assert!(
            s.workers[0].rx_frames >= 10 && s.workers[1].rx_frames >= 10,
            "{s:?}"
        );
        let ct = s.conntrack.expect("conntrack stats");
        assert_eq!(
            (ct.entries, ct.inserts, ct.insert_failed),
            (20, 20, 0),
            "{ct:?}"
        );
        // The services go with a Sync of everything else untouched, and
        // away with RemoveService.
        sync(
            &mut dp,
            vec![ep("a/eth0", "fya", A), ep("b/eth0", "fyb", B)],
        );
        assert_eq!(dp.dump().services.len(), 1);
        applied(dp.handle(Request::RemoveService {
            id: "default/web:80/TCP".into(),
        }));
        assert!(dp.dump().services.is_empty());
    }

    /// Sync `endpoints` with [`node`] and no routes; the generation.
    fn sync(dp: &mut Dataplane<MemBackend>, endpoints: Vec<Endpoint>) -> u64 {
        applied(dp.handle(Request::Sync {
            node: node(),
            endpoints,
            routes: vec![],
        }))
    }

    /// Pod A alone on port `ifname` (a tap-like wire if it starts with
    /// `ft`), synced, one worker.
    fn pod_a_alone(ifname: &str) -> (Dataplane<MemBackend>, Arc<MemWire>) {
        let net = MemNetwork::new();
        let wa = wire_for(&net, ifname);
        net.add("ferry0dp", 1);
        let mut dp = start(1, &net);
        sync(&mut dp, vec![ep("a/eth0", ifname, A)]);
        (dp, wa)
    }

    fn port_drops(dp: &Dataplane<MemBackend>, name: &str) -> BTreeMap<String, u64> {
        let stats = dp.stats();
        let p = stats.ports.iter().find(|p| p.name == name).expect(name);
        p.drops.clone()
    }

    /// A wire named `ifname`: tap-like (offloads) if the name starts with
    /// `ft`, as ferry names tap ports.
    fn wire_for(net: &MemNetwork, ifname: &str) -> Arc<MemWire> {
        if ifname.starts_with("ft") {
            net.add_offloaded(ifname, 1)
        } else {
            net.add(ifname, 1)
        }
    }

    /// A dataplane and the wires of pods A and B.
    type TwoPods = (Dataplane<MemBackend>, Arc<MemWire>, Arc<MemWire>);

    /// Pod A on port `a_ifname` and pod B on `fyb`, synced, one worker,
    /// `frames` frames per queue.
    fn pods_a_b(a_ifname: &str, frames: usize) -> TwoPods {
        let net = MemNetwork::new();
        let wa = wire_for(&net, a_ifname);
        let wb = net.add("fyb", 1);
        net.add("ferry0dp", 1);
        let mut dp = start_with_frames(1, &net, frames);
        sync(
            &mut dp,
            vec![ep("a/eth0", a_ifname, A), ep("b/eth0", "fyb", B)],
        );
        (dp, wa, wb)
    }

    #[test]
    fn shutdown_stops_workers_and_releases_ports() {
        let (mut dp, wa) = pod_a_alone("fya");
        dp.shutdown();
        assert!(dp.dump().ports.is_empty());
        wa.inject(0, arp_request(MacAddr::for_pod(A), A, GW));
        // The workers are joined: no thread is left that could answer.
        assert!(wa.take_sent().is_empty(), "nothing answers after shutdown");
        assert_eq!(wa.pending_rx(), 1);
    }

    /// A TCP frame from `from` to `to` with `payload`, as a tap pod's stack
    /// hands it over: valid IP checksum, TCP checksum left partial.
    fn partial_tcp(from: Ipv4Addr, to: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2(MacAddr::for_pod(from).0, MacAddr::ROUTER.0)
            .ipv4(from.octets(), to.octets(), 64)
            .tcp(40000, 5201, 1_000_000, 64240)
            .ack(7)
            .psh()
            .write(&mut f, payload)
            .unwrap();
        fixtures::make_partial(&mut f);
        f
    }

    /// What `wire` sent with its headers, waiting (bounded) for at least
    /// `n` frames.
    fn sent_offloaded(wire: &MemWire, n: usize) -> Vec<(Offload, Vec<u8>)> {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < deadline {
            got.extend(wire.take_sent_offloaded());
            std::thread::sleep(Duration::from_millis(2));
        }
        got
    }

    fn checksums_ok(f: &[u8]) -> bool {
        fixtures::ip_checksum_ok(f) && fixtures::l4_checksum_ok(f)
    }

    /// The worker's offload rules on in-memory ports: GSO frames go
    /// unchanged to an offload port and are segmented towards a plain
    /// port; partial checksums are completed only where needed; plain
    /// frames reach an offload port with a zeroed header.
    #[test]
    fn gso_frames_are_kept_for_taps_and_segmented_for_plain_ports() {
        const C: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 4);
        let net = MemNetwork::new();
        let wa = net.add_offloaded("fta", 1);
        let wb = net.add("fyb", 1);
        let wc = net.add_offloaded("ftc", 1);
        net.add("ferry0dp", 1);
        let mut dp = start(1, &net);
        applied(dp.handle(Request::Sync {
            node: node(),
            endpoints: vec![
                ep("a/eth0", "fta", A),
                ep("b/eth0", "fyb", B),
                ep("c/eth0", "ftc", C),
            ],
            routes: vec![],
        }));
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 13) as u8).collect();
        let gso = Offload {
            flags: offload::F_NEEDS_CSUM,
            gso_type: offload::GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1000,
            csum_start: 34,
            csum_offset: 16,
        };

        // Tap -> plain port: three segments with full checksums.
        wa.inject_offloaded(0, gso, partial_tcp(A, B, &payload));
        let segs = sent_offloaded(&wb, 3);
        assert_eq!(segs.len(), 3, "one GSO frame -> 3 segments");
        let mut joined = Vec::new();
        for (i, (off, f)) in segs.iter().enumerate() {
            assert_eq!(*off, Offload::NONE);
            assert_eq!(f.len(), 54 + 1000, "segment {i}");
            assert!(checksums_ok(f), "segment {i} checksums");
            let seq = u32::from_be_bytes([f[38], f[39], f[40], f[41]]);
            assert_eq!(seq, 1_000_000 + 1000 * i as u32);
            assert_eq!(f[47] & 0x08 != 0, i == 2, "PSH only on the last segment");
            assert_eq!(f[22], 63, "TTL decremented");
            joined.extend_from_slice(&f[54..]);
        }
        assert_eq!(joined, payload);

        // Tap -> tap: the frame and its header move unchanged.
        let frame = partial_tcp(A, C, &payload);
        wa.inject_offloaded(0, gso, frame.clone());
        let got = sent_offloaded(&wc, 1);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, gso, "header preserved");
        assert_eq!(got[0].1.len(), frame.len());
        assert_eq!(&got[0].1[54..], &frame[54..], "payload untouched");
        assert_eq!(&got[0].1[50..52], &frame[50..52], "checksum left partial");

        // Partial checksum without GSO towards a plain port: completed.
        let csum_only = Offload {
            gso_type: offload::GSO_NONE,
            gso_size: 0,
            ..gso
        };
        wa.inject_offloaded(0, csum_only, partial_tcp(A, B, b"small"));
        let got = sent_offloaded(&wb, 1);
        assert_eq!(got.len(), 1);
        assert!(checksums_ok(&got[0].1), "checksum completed");

        // Plain port -> tap: a zeroed header.
        let mut plain = partial_tcp(B, A, b"reply");
        offload::complete_csum(&mut plain, 34, 16).unwrap();
        wb.inject(0, plain);
        let got = sent_offloaded(&wa, 1);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, Offload::NONE);

        // A plain port's partial checksum (a veth's CHECKSUM_PARTIAL
        // frame) towards a tap: left partial, the header says where.
        let partial = partial_tcp(B, A, b"partial");
        wb.inject(0, partial.clone());
        let got = sent_offloaded(&wa, 1);
        assert_eq!(got.len(), 1);
        let (off, f) = &got[0];
        assert_eq!(
            (off.flags, off.csum_start, off.csum_offset),
            (offload::F_NEEDS_CSUM, 34, 16)
        );
        assert_eq!(&f[50..52], &partial[50..52], "checksum left partial");
        let mut completed = f.clone();
        offload::complete_csum(&mut completed, 34, 16).unwrap();
        assert!(checksums_ok(&completed), "the header completes it");

        let stats = dp.stats();
        let pa = stats.ports.iter().find(|p| p.name == "fta").unwrap();
        assert!(pa.drops.is_empty(), "{pa:?}");
        let pb = stats.ports.iter().find(|p| p.name == "fyb").unwrap();
        assert_eq!(pb.tx_frames, 4, "3 segments + 1 completed frame");
    }

    /// Two dataplanes joined uplink to uplink (in memory), VXLAN between
    /// them: a tap pod's 64 KiB-style GSO frame on A reaches a veth pod on
    /// B as segments, each encapsulated on its own with valid headers;
    /// frames wait for the peer's MAC (`neighbour_unresolved`) until the
    /// neighbour table has it, and the dump shows it.
    #[test]
    fn two_nodes_carry_a_gso_frame_through_vxlan() {
        use crate::core::wire::vxlan::{Outer, OUTER_LEN};
        use crate::io::port::LinkInfo;
        use ferry_api::table::{Overlay, Uplink};
        const NODE_A: Ipv4Addr = Ipv4Addr::new(192, 168, 70, 1);
        const NODE_B: Ipv4Addr = Ipv4Addr::new(192, 168, 70, 2);
        const POD_B: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 5);
        let (mac_a, mac_b) = (MacAddr([2, 0xa, 0, 0, 0, 1]), MacAddr([2, 0xb, 0, 0, 0, 2]));
        let overlay = Overlay::Vxlan { vni: 1, port: 4789 };
        let with_uplink = |mut n: NodeSettings, address| {
            n.uplink = Some(Uplink {
                ifname: "up0".into(),
                address,
                overlay,
                set_channels: false,
            });
            n
        };
        let peer = |cidr: &str, node: Ipv4Addr| Route {
            prefix: cidr.parse().unwrap(),
            next_hop: NextHop::Node(node.into()),
        };

        let net_a = MemNetwork::new();
        let wa = net_a.add_offloaded("fta", 1);
        net_a.add("ferry0dp", 1);
        let up_a = net_a.add("up0", 1);
        net_a.set_link(
            "up0",
            LinkInfo {
                mac: mac_a,
                mtu: 1500,
            },
        );
        let mut dp_a = start(1, &net_a);
        applied(dp_a.handle(Request::Sync {
            node: with_uplink(node(), NODE_A),
            endpoints: vec![ep("a/eth0", "fta", A)],
            routes: vec![peer("10.98.0.0/24", NODE_B)],
        }));

        let net_b = MemNetwork::new();
        let wb = net_b.add("fyb", 1);
        net_b.add("ferry0dp", 1);
        let up_b = net_b.add("up0", 1);
        net_b.set_link(
            "up0",
            LinkInfo {
                mac: mac_b,
                mtu: 1500,
            },
        );
        net_b.set_neighbour(NODE_A, Some(mac_a));
        let mut dp_b = start(1, &net_b);
        let mut node_b = with_uplink(node(), NODE_B);
        node_b.gateways = vec![Ipv4Addr::new(10, 98, 0, 1).into()];
        node_b.pod_cidrs = vec!["10.98.0.0/24".parse().unwrap()];
        applied(dp_b.handle(Request::Sync {
            node: node_b,
            endpoints: vec![ep("b/eth0", "fyb", POD_B)],
            routes: vec![peer("10.99.0.0/24", NODE_A)],
        }));

        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        let gso = Offload {
            flags: offload::F_NEEDS_CSUM,
            gso_type: offload::GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1000,
            csum_start: 34,
            csum_offset: 16,
        };
        // B's MAC is not known on A yet.
        wa.inject_offloaded(0, gso, partial_tcp(A, POD_B, &payload));
        wait_for("neighbour_unresolved on A", || {
            port_drops(&dp_a, "fta").get("neighbour_unresolved") == Some(&1)
        });
        assert_eq!(dp_a.dump().neighbours[0].mac, None);
        net_a.set_neighbour(NODE_B, Some(mac_b));
        dp_a.refresh_neighbours();
        assert_eq!(dp_a.dump().neighbours[0].mac, Some(mac_b));

        wa.inject_offloaded(0, gso, partial_tcp(A, POD_B, &payload));
        let wire = sent(&up_a, 3);
        assert_eq!(wire.len(), 3, "one GSO frame -> 3 encapsulated segments");
        for (i, f) in wire.iter().enumerate() {
            assert_eq!(f.len(), OUTER_LEN + 54 + 1000, "segment {i}");
            assert_eq!(&f[..6], &mac_b.0);
            let o = Outer::parse(f, NODE_B, 4789, 1).expect("valid outer headers");
            assert_eq!((o.src, o.inner_len), (NODE_A, 54 + 1000));
            assert!(checksums_ok(&f[OUTER_LEN..]), "segment {i} inner checksums");
            up_b.inject(0, f.clone());
        }
        let delivered = sent(&wb, 3);
        let joined: Vec<u8> = delivered.iter().flat_map(|f| f[54..].to_vec()).collect();
        assert_eq!(joined, payload);
        assert!(delivered
            .iter()
            .all(|f| checksums_ok(f) && f[..6] == MacAddr::for_pod(POD_B).0));

        let stats = dp_a.stats();
        let up = stats.ports.iter().find(|p| p.name == "up0").unwrap();
        assert_eq!(
            (up.endpoint.as_str(), up.mode.as_str(), up.tx_frames),
            (UPLINK_LABEL, "mem", 3)
        );
    }

    /// A GSO frame from a tap whose segments exceed the egress pod's MTU
    /// is answered on the tap with ICMP fragmentation needed (a plain
    /// frame), nothing reaches the pod, and the original counts as
    /// `frag_needed` on the ingress port and the worker.
    #[test]
    fn too_big_for_the_egress_mtu_is_answered_on_the_ingress_and_counted() {
        let net = MemNetwork::new();
        let wa = net.add_offloaded("fta", 1);
        let wb = net.add("fyb", 1);
        net.add("ferry0dp", 1);
        let mut dp = start(1, &net);
        applied(dp.handle(Request::Sync {
            node: node(),
            endpoints: vec![
                Endpoint {
                    mtu: Some(9000),
                    ..ep("a/eth0", "fta", A)
                },
                Endpoint {
                    mtu: Some(1400),
                    ..ep("b/eth0", "fyb", B)
                },
            ],
            routes: vec![],
        }));
        let gso = fixtures::gso_tcp4;
        let payload = vec![0x42u8; 8000];
        wa.inject_offloaded(0, gso(8000), partial_tcp(A, B, &payload));
        let got = sent_offloaded(&wa, 1);
        assert_eq!(got.len(), 1, "the ICMP error comes back on the tap");
        let (off, f) = &got[0];
        assert_eq!(*off, Offload::NONE);
        assert!(checksums_ok(f));
        assert_eq!((f[34], f[35]), (3, 4), "type 3 code 4");
        assert_eq!(u16::from_be_bytes([f[40], f[41]]), 1400, "next-hop MTU");
        // Segments that fit go through, segmented for the plain port.
        wa.inject_offloaded(0, gso(1360), partial_tcp(A, B, &payload[..2720]));
        assert_eq!(sent_offloaded(&wb, 2).len(), 2);
        assert!(wb.take_sent_offloaded().is_empty());

        let stats = dp.stats();
        let pa = stats.ports.iter().find(|p| p.name == "fta").unwrap();
        assert_eq!(pa.drops.get("frag_needed"), Some(&1), "{pa:?}");
        assert_eq!(pa.tx_frames, 1, "the ICMP error");
        assert_eq!(stats.workers[0].drops.get("frag_needed"), Some(&1));
        assert!(stats.drop_reasons.iter().any(|r| r == "too_big_no_df"));
    }

    /// A tap header pointing the checksum completion at the IP source (or
    /// asking for a thousand segments) is dropped and counted at ingress;
    /// nothing reaches the plain port it was routed to.
    #[test]
    fn forged_tap_headers_are_counted_and_never_acted_on() {
        let (dp, wa, wb) = pods_a_b("fta", 256);
        let at_src = Offload {
            flags: offload::F_NEEDS_CSUM,
            csum_start: 26,
            csum_offset: 0,
            ..Offload::NONE
        };
        wa.inject_offloaded(0, at_src, partial_tcp(A, B, b"spoof"));
        let tiny_mss = Offload {
            flags: offload::F_NEEDS_CSUM,
            gso_type: offload::GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1,
            csum_start: 34,
            csum_offset: 16,
        };
        wa.inject_offloaded(0, tiny_mss, partial_tcp(A, B, &[0u8; 2000]));
        wait_for("both headers counted", || port_drops(&dp, "fta").len() == 2);
        assert!(wb.take_sent().is_empty(), "nothing forwarded");
        let drops = port_drops(&dp, "fta");
        assert_eq!(drops.get("bad_csum_offload"), Some(&1), "{drops:?}");
        assert_eq!(drops.get("bad_gso_size"), Some(&1), "{drops:?}");
    }
}
