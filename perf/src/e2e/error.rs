//! The harness's error type.

use std::io;

/// Everything that can make an end-to-end run fail, with enough context to act on.
#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    #[error("command `{cmd}` failed: {detail}")]
    Command { cmd: String, detail: String },
    #[error("command `{cmd}` did not finish within {secs:.1} s")]
    Timeout { cmd: String, secs: f64 },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot parse {what}: {detail}")]
    Parse { what: String, detail: String },
    #[error("interrupted by a signal")]
    Interrupted,
    #[error("setting up {topology}: {detail}")]
    Setup { topology: String, detail: String },
    #[error("XDP: {0}")]
    Xdp(String),
    #[error("workload {workload} on {topology}: {detail}")]
    Workload {
        workload: String,
        topology: String,
        detail: String,
    },
    #[error("writing the report: {0}")]
    Report(String),
}

impl E2eError {
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        E2eError::Io {
            what: what.into(),
            source,
        }
    }
    pub fn parse(what: impl Into<String>, detail: impl Into<String>) -> Self {
        E2eError::Parse {
            what: what.into(),
            detail: detail.into(),
        }
    }
    pub fn setup(topology: impl Into<String>, detail: impl Into<String>) -> Self {
        E2eError::Setup {
            topology: topology.into(),
            detail: detail.into(),
        }
    }
}

pub type Result<T, E = E2eError> = std::result::Result<T, E>;
