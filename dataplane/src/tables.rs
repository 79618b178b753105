//! Forwarding tables: immutable snapshots published by one writer (the
//! control thread) and read without locks by the workers.
//! (Interface stub; see ARCHITECTURE.md "Tables".)

use std::net::Ipv4Addr;

use ferry_api::MacAddr;

/// Index of a port in the dataplane (pod host veth or host port).
pub type PortId = u32;

/// What the pipeline knows about one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRole {
    /// A pod's host veth; the pod has this address.
    Pod { ip: Ipv4Addr, mac: MacAddr },
    /// The port to the node kernel.
    Host,
}

/// One immutable version of the tables.
#[derive(Debug, Default)]
pub struct Tables {
    pub generation: u64,
}
