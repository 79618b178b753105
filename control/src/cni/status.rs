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
            cluster: Some(Box::new(self.member.view())),
        };
        let store = Arc::clone(&self.store);
        let pools = self.node_pools.clone();
        // Per range set (family): addresses in use and free. A pod needs an
        // address of every family: one set without a free address fails
        // every ADD.
        let usage = blocking(move || {
            let mut usage = Vec::new();
            for set in &pools.0 {
                let allocated = store.allocated_in(|ip| set.pool_of(ip).is_some())?;
                let free = set.size().saturating_sub(allocated);
                let subnets: Vec<IpNet> = set.0.iter().map(|p| p.subnet).collect();
                usage.push((set.is_ipv4(), allocated, free, subnets));
            }
            Ok::<_, StoreError>(usage)
        });
        let usage = match usage.await {
            Ok(Ok(usage)) => usage,
            Ok(Err(e)) => return not_ready(code::NOT_AVAILABLE, format!("store: {e}"), stale),
            Err(e) => return not_ready(code::NOT_AVAILABLE, e.details, stale),
        };
        let full: Vec<IpNet> = usage
            .iter()
            .filter(|u| u.2 == 0)
            .flat_map(|u| u.3.clone())
            .collect();
        let in_use = usage
            .iter()
            .map(|(v4, allocated, free, _)| {
                let family = match (usage.len(), v4) {
                    (1, _) => "",
                    (_, true) => " (IPv4)",
                    (_, false) => " (IPv6)",
                };
                format!("{allocated} address(es) in use, {free} free{family}")
            })
            .collect::<Vec<_>>()
            .join(", ");
        let Some(w) = self.dp.workers() else {
            return not_ready(
                code::NOT_AVAILABLE,
                "ferry-dataplane is not connected".into(),
                stale,
            );
        };
        if !full.is_empty() {
            return not_ready(
                code::NOT_AVAILABLE,
                format!("no free address in {full:?}"),
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
                "ferry-dataplane connected ({w} worker(s), generation {}); {in_use}{stale_note}{cluster_note}",
                self.dp.generation()
            ),
            code: 0,
            stale,
            cluster: Some(Box::new(cluster)),
        }
    }
}
