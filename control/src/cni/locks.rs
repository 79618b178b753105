//! Per-attachment locks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// Per-attachment locks: ADD/DEL/CHECK of one (container id, ifname) run
/// one at a time; different attachments run concurrently.
#[derive(Default)]
pub(super) struct Locks {
    map: Mutex<HashMap<LockKey, Arc<tokio::sync::Mutex<()>>>>,
}

/// (container id, ifname).
type LockKey = (String, String);

pub(super) struct LockGuard<'a> {
    locks: &'a Locks,
    key: LockKey,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Locks {
    pub(super) async fn lock(&self, container_id: &str, ifname: &str) -> LockGuard<'_> {
        let key = (container_id.to_string(), ifname.to_string());
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(map.entry(key.clone()).or_default())
        };
        let guard = m.lock_owned().await;
        LockGuard {
            locks: self,
            key,
            guard: Some(guard),
        }
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.map.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map holds it: nobody waits, the entry can go. Clones are
        // taken under the map lock, so none can appear meanwhile.
        if map
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.key);
        }
    }
}
