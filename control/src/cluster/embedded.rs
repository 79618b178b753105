//! The single node's datastore: nothing to start, nothing shared. Its block
//! is the configured pod CIDR, its peers the configured `[[peers]]`, and
//! they never change while ferryd runs.

use async_trait::async_trait;
use ipnet::Ipv4Net;

use super::{
    Claim, ClusterSettings, Datastore, DsError, Listing, NodeRecord, NodeWatch, WatchEvent,
};

pub struct Embedded {
    block: Ipv4Net,
    peers: Vec<NodeRecord>,
}

impl Embedded {
    /// `block`: this node's pod CIDR; `peers`: the configured peers' records.
    pub fn new(block: Ipv4Net, peers: Vec<NodeRecord>) -> Embedded {
        Embedded { block, peers }
    }
}

#[async_trait]
impl Datastore for Embedded {
    fn describe(&self) -> String {
        "embedded (this node's configuration)".into()
    }

    async fn settings(&self, mine: &ClusterSettings) -> Result<ClusterSettings, DsError> {
        Ok(mine.clone())
    }

    async fn claim(
        &self,
        me: &NodeRecord,
        _settings: &ClusterSettings,
        _preferred: Option<Ipv4Net>,
    ) -> Result<Claim, DsError> {
        Ok(Claim {
            record: NodeRecord {
                block: self.block,
                ..me.clone()
            },
            lease: 0,
        })
    }

    async fn renew(&self, _claim: &Claim, _now: u64) -> Result<bool, DsError> {
        Ok(true)
    }

    async fn release(&self, _claim: &Claim) -> Result<(), DsError> {
        Ok(())
    }

    async fn release_node(&self, _name: &str) -> Result<Vec<Ipv4Net>, DsError> {
        Ok(Vec::new())
    }

    async fn list(&self) -> Result<Listing, DsError> {
        Ok(Listing {
            nodes: self.peers.clone(),
            unreadable: Vec::new(),
            revision: 0,
        })
    }

    async fn watch(&self, _revision: i64) -> Result<Box<dyn NodeWatch>, DsError> {
        Ok(Box::new(Never))
    }
}

/// A watch on a configuration that cannot change.
struct Never;

#[async_trait]
impl NodeWatch for Never {
    async fn next(&mut self) -> WatchEvent {
        std::future::pending().await
    }
}
