//! One real worker on in-memory ports, driven pass by pass by the test:
//! no thread, no sleep, a fake clock. After every pass the frames of every
//! queue are counted by place ([`crate::engine::worker::FrameCensus`]) and
//! must add up to the pool: none lost, none duplicated.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crossbeam::channel::{self, Sender};
use ferry_api::table::{PortStats, WorkerStats};

use crate::core::tables::{PortId, TableHandle, Tables};
use crate::engine::counters::{
    new_port_counters, new_worker_counters, PortCounters, WorkerCounters,
};
use crate::engine::worker::{PassOutcome, Worker, WorkerCmd, WorkerConfig};
use crate::io::port::{PortBackend, PortSpec};
use crate::sim::{MemBackend, MemNetwork, MemQueue, MemWire};

/// How far the fake clock moves per pass.
pub const PASS_NS: u64 = 1_000_000;

/// A worker, its ports and its tables, stepped by hand.
pub struct SimNode {
    net: MemNetwork,
    backend: MemBackend,
    tables: Arc<TableHandle>,
    cmds: Sender<WorkerCmd<MemQueue>>,
    worker: Worker<MemQueue>,
    counters: Arc<WorkerCounters>,
    ports: BTreeMap<String, (PortId, Arc<PortCounters>)>,
    now_ns: u64,
}

impl SimNode {
    /// One worker (id 0, batch `batch`) whose queues have `frames` frames.
    pub fn new(frames: usize, batch: usize) -> SimNode {
        Self::with_pools(frames, batch, false)
    }

    /// [`SimNode::new`] whose plain ports share one pool of `frames`
    /// frames, as AF_XDP sockets share their worker's UMEM.
    pub fn shared(frames: usize, batch: usize) -> SimNode {
        Self::with_pools(frames, batch, true)
    }

    fn with_pools(frames: usize, batch: usize, shared: bool) -> SimNode {
        let net = MemNetwork::new();
        let mut backend = MemBackend::new(net.clone());
        backend.frames_per_queue = frames;
        backend.share_pools = shared;
        let tables = Arc::new(TableHandle::default());
        let (cmds, rx) = channel::unbounded();
        let counters = Arc::new(new_worker_counters());
        let cfg = WorkerConfig {
            id: 0,
            batch,
            idle_timeout: std::time::Duration::ZERO,
            idle_spin: std::time::Duration::ZERO,
            poll_mode: crate::engine::worker::PollMode::Interrupt,
            cpu: None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker::new(cfg, Arc::clone(&tables), rx, Arc::clone(&counters), stop);
        SimNode {
            net,
            backend,
            tables,
            cmds,
            worker,
            counters,
            ports: BTreeMap::new(),
            now_ns: 0,
        }
    }

    /// Make interface `name` (with virtio-net headers if `offload`, like a
    /// tap) and give the worker its queue as port `id`, applied at the
    /// next step.
    pub fn add_port(&mut self, name: &str, id: PortId, offload: bool) -> Arc<MemWire> {
        let wire = if offload {
            self.net.add_offloaded(name, 1)
        } else {
            self.net.add(name, 1)
        };
        let (_attachment, mut queues) = self
            .backend
            .open(&PortSpec::pod_veth(name), 1)
            .expect("an in-memory wire opens");
        let counters = Arc::new(new_port_counters());
        self.send(WorkerCmd::AddPort {
            port: id,
            queue: queues.pop().flatten(),
            counters: Arc::clone(&counters),
        });
        self.ports.insert(name.to_string(), (id, counters));
        wire
    }

    /// Take port `name` away from the worker (at the next step).
    pub fn remove_port(&mut self, name: &str) {
        if let Some((id, _)) = self.ports.remove(name) {
            self.send(WorkerCmd::RemovePort { port: id });
        }
        self.net.remove(name);
    }

    fn send(&self, cmd: WorkerCmd<MemQueue>) {
        self.cmds.send(cmd).expect("the worker is ours");
    }

    /// Publish `tables` (what the worker loads at its next batch).
    pub fn publish(&self, tables: Tables) {
        self.tables.publish(tables);
    }

    /// One pass of the worker, then the frame count of every queue.
    pub fn step(&mut self) -> PassOutcome {
        self.now_ns += PASS_NS;
        let outcome = self.worker.step(self.now_ns);
        self.assert_conserved();
        outcome
    }

    /// Step until a pass moves nothing (at most `max` passes); how many
    /// passes were busy.
    pub fn settle(&mut self, max: usize) -> usize {
        for busy in 0..max {
            if self.step() != PassOutcome::Busy {
                return busy;
            }
        }
        panic!("still busy after {max} passes");
    }

    /// Every pool's frames add up, and the worker has a queue on no port
    /// it was not given.
    pub fn assert_conserved(&self) {
        let mut seen = 0;
        for census in self.worker.census() {
            assert!(census.conserved(), "{census:?}");
            seen += census.queues;
        }
        assert!(seen <= self.ports.len(), "the worker kept a removed port");
    }

    /// The worker's direct access, for what the helpers do not cover.
    pub fn worker(&mut self) -> &mut Worker<MemQueue> {
        &mut self.worker
    }

    pub fn worker_stats(&self) -> WorkerStats {
        self.counters.snapshot(0, None)
    }

    pub fn port_stats(&self, name: &str) -> PortStats {
        let counters = &self.ports[name].1;
        let mut s = PortStats {
            name: name.to_string(),
            attached: !counters.detached(),
            ..Default::default()
        };
        counters.sum_into(&mut s);
        s
    }
}
