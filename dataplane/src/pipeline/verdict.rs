//! Verdicts and numbered drop reasons.

use crate::tables::PortId;

/// What happens to one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit the (possibly rewritten) frame on this port.
    Tx(PortId),
    /// Drop it, counted under this reason.
    Drop(DropReason),
}

/// Why a frame was dropped. Numbers are stable and never reused: they are
/// what operators see in counters and what dashboards key on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum DropReason {
    NotImplemented = 0,
}

impl DropReason {
    pub const ALL: &'static [DropReason] = &[DropReason::NotImplemented];

    /// Counter name (`drop_<name>` in metrics).
    pub fn name(self) -> &'static str {
        match self {
            DropReason::NotImplemented => "not_implemented",
        }
    }
}
