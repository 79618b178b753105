//! DEL: dataplane remove -> link deleted -> address released, idempotent.

use super::*;

impl Agent {
    pub(super) async fn del(&self, req: &PodRequest) -> Result<(), PodError> {
        let id = Self::attachment(req)?;
        let _lock = self.locks.lock(&id.container_id, &id.ifname).await;
        self.release_attachment(&id).await
    }

    /// DEL under the attachment lock: idempotent.
    pub(super) async fn release_attachment(&self, id: &AttachmentId) -> Result<(), PodError> {
        let rec = {
            let (store, id) = (Arc::clone(&self.store), id.clone());
            blocking(move || store.get(&id)).await?.map_err(store_err)?
        };
        let (host, deleted) = match &rec {
            Some(r) => {
                if let Err(e) = self.dp.remove(&id.endpoint_id(), REPLY_TIMEOUT).await {
                    // The endpoint left the synced set: the next Sync drops it.
                    log::info!("DEL {id}: dataplane: {e} (reconciled at the next sync)");
                }
                let deleted = unplumb_record(&self.netlink, r).await.map_err(|e| {
                    err(
                        code::PLUMBING_FAILED,
                        format!("delete the {} of {id}", r.attachment.name()),
                        e.to_string(),
                    )
                })?;
                (r.host_ifname.clone(), deleted)
            }
            None => {
                let host = host_ifname(&id.container_id, &id.ifname);
                let deleted = self.netlink.unplumb(&host).await.map_err(|e| {
                    err(
                        code::PLUMBING_FAILED,
                        format!("delete host veth {host}"),
                        e.to_string(),
                    )
                })?;
                (host, deleted)
            }
        };
        if let Some(r) = rec {
            let (store, id2) = (Arc::clone(&self.store), id.clone());
            blocking(move || store.release(&id2))
                .await?
                .map_err(store_err)?;
            self.services
                .endpoint_down(&id.endpoint_id(), &self.dp)
                .await;
            log::info!(
                "DEL {id}: released {}{}",
                r.addrs,
                if deleted { ", link deleted" } else { "" }
            );
        } else if deleted {
            log::info!("DEL {id}: no record, deleted leftover {host}");
        }
        Ok(())
    }
}
