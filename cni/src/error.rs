//! The CNI error every failure of the plugin ends in: a spec code, a message
//! a person can act on, and details (the underlying cause).

use ferry_api::pod::{code, PodError};

/// A failure reported to the runtime as
/// `{"cniVersion", "code", "msg", "details"}` on stdout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// Code 1: the cniVersion asked is not one ferry speaks, or the command
    /// needs a newer one.
    pub fn incompatible_version(msg: impl Into<String>) -> Self {
        Self::new(code::INCOMPATIBLE_VERSION, msg)
    }

    /// Code 4: a CNI_* environment variable is missing or malformed.
    pub fn invalid_env(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_ENV, msg)
    }

    /// Code 5: reading stdin or talking to ferryd failed below the protocol.
    pub fn io(msg: impl Into<String>) -> Self {
        Self::new(code::IO, msg)
    }

    /// Code 6: stdin is not a JSON network configuration.
    pub fn decode(msg: impl Into<String>) -> Self {
        Self::new(code::DECODE, msg)
    }

    /// Code 7: the network configuration is JSON but not valid for ferry.
    pub fn invalid_config(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_CONFIG, msg)
    }

    /// Code 11: try again later (ferryd not reachable or too slow).
    pub fn try_again_later(msg: impl Into<String>) -> Self {
        Self::new(code::TRY_AGAIN_LATER, msg)
    }

    /// Code 50: STATUS says the plugin cannot serve ADD now.
    pub fn not_available(msg: impl Into<String>) -> Self {
        Self::new(code::NOT_AVAILABLE, msg)
    }

    /// Code 51: STATUS says ADD works but pods will lack some connectivity
    /// (the node cannot reach them: ferry's host port is missing).
    pub fn limited_connectivity(msg: impl Into<String>) -> Self {
        Self::new(code::LIMITED_CONNECTIVITY, msg)
    }
}

impl From<PodError> for CniError {
    fn from(e: PodError) -> Self {
        CniError {
            code: e.code,
            msg: e.msg,
            details: e.details,
        }
    }
}
