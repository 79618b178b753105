//! Every failure of a pod request as the CNI error it is reported as.

use super::*;

pub(super) fn err(code: u32, msg: impl Into<String>, details: impl Into<String>) -> PodError {
    PodError {
        code,
        msg: msg.into(),
        details: details.into(),
    }
}

pub(super) fn store_err(e: impl std::fmt::Display) -> PodError {
    err(code::STORE, "ferryd's state store failed", e.to_string())
}

impl From<IpamError> for PodError {
    fn from(e: IpamError) -> Self {
        err(code::INVALID_CONFIG, "invalid ipam ranges", e.to_string())
    }
}

pub(super) fn alloc_err(e: AllocError) -> PodError {
    match e {
        AllocError::Exhausted { .. } => err(code::POOL_EXHAUSTED, "no free address", e.to_string()),
        AllocError::Unavailable { .. } => err(
            code::ADDRESS_UNAVAILABLE,
            "requested address is not available",
            e.to_string(),
        ),
        AllocError::AlreadyExists { .. } | AllocError::Store(_) => store_err(e),
    }
}

pub(super) fn dp_err(e: DpError) -> PodError {
    match e {
        DpError::Refused(_) => err(
            code::PLUMBING_FAILED,
            "ferry-dataplane refused the endpoint",
            e.to_string(),
        ),
        DpError::NotConnected => err(
            code::TRY_AGAIN_LATER,
            "ferry-dataplane is not connected",
            "",
        ),
        _ => err(
            code::TRY_AGAIN_LATER,
            "ferry-dataplane did not acknowledge the endpoint",
            e.to_string(),
        ),
    }
}

pub(super) fn netns_err(e: NetnsError) -> PodError {
    let code = match &e {
        NetnsError::Timeout { .. } => code::TRY_AGAIN_LATER,
        NetnsError::Io { .. } => code::IO,
        _ => code::INVALID_ENV,
    };
    err(
        code,
        "CNI_NETNS is not a usable pod network namespace",
        e.to_string(),
    )
}

pub(super) fn abandoned(why: String) -> PodError {
    err(code::TRY_AGAIN_LATER, "ADD abandoned and rolled back", why)
}
