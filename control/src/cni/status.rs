//! STATUS: whether ADD can be served, with the stale attachments.

use super::*;

impl Agent {
    pub(super) async fn status(&self) -> PodResponse {
        let stale = self.dp.stale();
        let not_ready = |code: u32, msg: String, stale: Vec<_>| PodResponse::Status {
            ready: false,
            msg,
            code,
            stale,
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
        PodResponse::Status {
            ready: true,
            msg: format!(
                "ferry-dataplane connected ({w} worker(s), generation {}); {allocated} address(es) in use, {free} free{stale_note}",
                self.dp.generation()
            ),
            code: 0,
            stale,
        }
    }
}
