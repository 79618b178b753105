//! GC: release every attachment of the network not named valid.

use super::*;

impl Agent {
    pub(super) async fn gc(&self, req: &PodRequest) -> Result<(), PodError> {
        let valid: BTreeSet<(String, String)> = req
            .valid_attachments
            .iter()
            .map(|a| (a.container_id.clone(), a.ifname.clone()))
            .collect();
        let records = {
            let store = Arc::clone(&self.store);
            blocking(move || store.records())
                .await?
                .map_err(store_err)?
        };
        let mut failed = Vec::new();
        for rec in records {
            if rec.id.network != req.network
                || valid.contains(&(rec.id.container_id.clone(), rec.id.ifname.clone()))
            {
                continue;
            }
            let _lock = self.locks.lock(&rec.id.container_id, &rec.id.ifname).await;
            log::info!(
                "GC {}: not in valid attachments, releasing {}",
                rec.id,
                rec.addrs
            );
            if let Err(e) = self.release_attachment(&rec.id).await {
                failed.push(format!("{}: {} ({})", rec.id, e.msg, e.details));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(err(
                code::PLUMBING_FAILED,
                "GC could not release every attachment",
                failed.join("; "),
            ))
        }
    }
}
