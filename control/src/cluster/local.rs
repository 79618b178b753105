//! What this node remembers of the cluster between runs, in
//! `<state_dir>/cluster.json`: its block (asked for first at the next
//! start, so a node that left rejoins with the same block when it is still
//! free) and the last peers it knew (routed at start while the datastore
//! cannot be reached, so forwarding goes on).
//!
//! Written atomically (temporary file, fsync, rename). A file that cannot
//! be read is logged and ignored: everything in it can be learned again.

use std::io::Write;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::NodeRecord;

pub const FILE: &str = "cluster.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Saved {
    /// The node name the block was claimed under.
    pub node_name: String,
    pub block: Option<Ipv4Net>,
    /// The other nodes, as last known.
    pub peers: Vec<NodeRecord>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// The saved state, if there is a readable one for `node_name`.
pub fn load(state_dir: &Path, node_name: &str) -> Option<Saved> {
    let p = path(state_dir);
    let text = match std::fs::read(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            log::warn!("{}: {e}; starting without it", p.display());
            return None;
        }
    };
    match serde_json::from_slice::<Saved>(&text) {
        Ok(s) if s.node_name == node_name => Some(s),
        Ok(s) => {
            log::warn!(
                "{} is node {:?}'s, this node is {node_name:?}; starting without it",
                p.display(),
                s.node_name
            );
            None
        }
        Err(e) => {
            log::warn!(
                "{} is not ferry's cluster state ({e}); starting without it",
                p.display()
            );
            None
        }
    }
}

/// Save `s` (blocking: fsyncs).
pub fn save(state_dir: &Path, s: &Saved) -> std::io::Result<()> {
    let p = path(state_dir);
    let tmp = state_dir.join(format!("{FILE}.tmp"));
    let body = serde_json::to_vec_pretty(s).map_err(std::io::Error::other)?;
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &p)?;
    if let Ok(d) = std::fs::File::open(state_dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
