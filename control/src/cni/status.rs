//! STATUS: whether ADD can be served, with the stale attachments.

use super::*;

impl Agent {
    pub(super) async fn status(&self) -> PodResponse {
        let stale = self.dp.stale();
        let cluster = self.member.view();
        let not_ready = |code: u32, msg: String, stale: Vec<_>| PodResponse::Status {
            ready: false,
            msg,
            code,
            stale,
            cluster: Some(self.member.view()),
        };
        let store = Arc::clone(&self.store);
        let pools = self.node_pools.clone();
        let allocated = match blocking(move || store.allocated_in(&pools)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return not_ready(code::NOT_AVAILABLE, format!("store: {e}"), stale),
            Err(e) => return not_ready(code::NOT_AVAILABLE, e.details, stale),
        };
        let free = self.node_pools.size().saturating_sub(allocated);
        let Some(w) = self.dp.workers() else {
            return not_ready(
                code::NOT_AVAILABLE,
                "ferry-dataplane is not connected".into(),
                stale,
            );
        };
        if free == 0 {
            return not_ready(
                code::NOT_AVAILABLE,
                format!("no free address in {:?}", self.cfg.pod_cidrs),
                stale,
            );
        }
        if let Some(problem) = self.dp.host_port_problem() {
            return not_ready(
                code::LIMITED_CONNECTIVITY,
                format!("the node cannot reach its pods: {problem}"),
                stale,
            );
        }
        if let Some(problem) = self.dp.uplink_problem() {
            return not_ready(
                code::LIMITED_CONNECTIVITY,
                format!("pods cannot reach other nodes: {problem}"),
                stale,
            );
        }
        if !self.node_problems.is_empty() {
            return not_ready(
                code::LIMITED_CONNECTIVITY,
                format!(
                    "pods cannot reach beyond the cluster: {}",
                    self.node_problems.join("; ")
                ),
                stale,
            );
        }
        let stale_note = match stale.len() {
            0 => String::new(),
            n => format!("; {n} stale attachment(s) kept until DEL or GC (pod gone)"),
        };
        // A datastore that does not answer costs no pod: ADD is served from
        // the node's own block and the known peers stay routed. Said here,
        // not as "not ready" (the runtime would stop starting pods).
        let cluster_note = match (&self.cfg.cluster, cluster.reachable) {
            (None, _) => String::new(),
            (Some(_), true) => format!(
                "; block {} in the cluster, {} peer(s) routed",
                self.cfg.pod_cidrs[0],
                self.member.peer_addresses().len()
            ),
            (Some(_), false) => format!(
                "; datastore {} UNREACHABLE ({}): forwarding to the {} peer(s) last known, no new node is learnt",
                cluster.datastore,
                cluster.error.as_deref().unwrap_or("no answer"),
                self.member.peer_addresses().len()
            ),
        };
        PodResponse::Status {
            ready: true,
            msg: format!(
                "ferry-dataplane connected ({w} worker(s), generation {}); {allocated} address(es) in use, {free} free{stale_note}{cluster_note}",
                self.dp.generation()
            ),
            code: 0,
            stale,
            cluster: Some(cluster),
        }
    }
}
