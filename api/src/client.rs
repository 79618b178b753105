//! One blocking request to ferryd (pod API) or ferry-dataplane (table API,
//! read-only), each on a fresh connection with bounded waits: what ferryctl
//! and ferryd's metrics endpoint ask.

use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::objects::{ObjectsEnvelope, ObjectsRequest, ObjectsResponse};
use crate::pod::{ClusterView, Command, PodRequest, PodResponse, StaleAttachment};
use crate::table::{self, Stats, TableDump};
use crate::wire::{self, WireError};

/// Longest wait for each write and read.
pub const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {what} at {path}: {source}")]
    Connect {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} at {path}: {source}")]
    Wire {
        what: &'static str,
        path: PathBuf,
        source: WireError,
    },
    #[error("{what} answered with an error: {msg}")]
    Refused { what: &'static str, msg: String },
    #[error("{what} answered {got} to {asked}")]
    Unexpected {
        what: &'static str,
        asked: &'static str,
        got: String,
    },
}

/// Checks the reply to the greeting a protocol starts with.
type HelloCheck<Resp> = fn(&Resp) -> Result<(), ClientError>;

/// One request on a fresh connection. With `hello`, that message is sent
/// first and its reply checked by `hello_ok` (the table API wants a `Hello`
/// on every connection).
fn call<Req: Serialize, Resp: serde::de::DeserializeOwned>(
    what: &'static str,
    path: &Path,
    hello: Option<(&Req, HelloCheck<Resp>)>,
    req: &Req,
) -> Result<Resp, ClientError> {
    let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let wire_err = |source| ClientError::Wire {
        what,
        path: path.to_path_buf(),
        source,
    };
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| wire_err(e.into()))?;
    stream
        .set_write_timeout(Some(TIMEOUT))
        .map_err(|e| wire_err(e.into()))?;
    let mut w = &stream;
    let mut r = BufReader::new(&stream);
    if let Some((hello, hello_ok)) = hello {
        wire::write_message(&mut w, hello).map_err(wire_err)?;
        let reply: Resp = wire::read_message(&mut r).map_err(wire_err)?;
        hello_ok(&reply)?;
    }
    wire::write_message(&mut w, req).map_err(wire_err)?;
    wire::read_message(&mut r).map_err(wire_err)
}

const DP: &str = "ferry-dataplane";

fn dp_hello_ok(reply: &table::Response) -> Result<(), ClientError> {
    match reply {
        table::Response::Hello { .. } => Ok(()),
        table::Response::Error { message } => Err(ClientError::Refused {
            what: DP,
            msg: message.clone(),
        }),
        other => Err(ClientError::Unexpected {
            what: DP,
            asked: "Hello",
            got: format!("{other:?}"),
        }),
    }
}

/// A read-only table-API request, after the `Hello`.
fn dp_call(dataplane: &Path, req: &table::Request) -> Result<table::Response, ClientError> {
    let hello = table::Request::Hello {
        api_version: table::API_VERSION,
    };
    call(DP, dataplane, Some((&hello, dp_hello_ok)), req)
}

/// The dataplane's tables (`Tables` request).
pub fn tables(dataplane: &Path) -> Result<TableDump, ClientError> {
    match dp_call(dataplane, &table::Request::Tables)? {
        table::Response::Tables(t) => Ok(*t),
        table::Response::Error { message } => Err(ClientError::Refused {
            what: DP,
            msg: message,
        }),
        other => Err(ClientError::Unexpected {
            what: DP,
            asked: "Tables",
            got: format!("{other:?}"),
        }),
    }
}

/// The dataplane's counters (`Stats` request).
pub fn stats(dataplane: &Path) -> Result<Stats, ClientError> {
    match dp_call(dataplane, &table::Request::Stats)? {
        table::Response::Stats(s) => Ok(s),
        table::Response::Error { message } => Err(ClientError::Refused {
            what: DP,
            msg: message,
        }),
        other => Err(ClientError::Unexpected {
            what: DP,
            asked: "Stats",
            got: format!("{other:?}"),
        }),
    }
}

/// ferryd's STATUS answer.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct FerrydStatus {
    pub ready: bool,
    pub msg: String,
    /// Attachments whose pod is gone, kept until DEL or GC.
    pub stale: Vec<StaleAttachment>,
    /// The cluster as the node sees it, if ferryd says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterView>,
}

/// ferryd's STATUS.
pub fn ferryd_status(ferryd: &Path) -> Result<FerrydStatus, ClientError> {
    let req = PodRequest {
        command: Command::Status,
        network: String::new(),
        container_id: String::new(),
        netns: None,
        ifname: String::new(),
        args: Default::default(),
        ipam: Default::default(),
        mtu: None,
        attachment: Default::default(),
        valid_attachments: Vec::new(),
        prev_result: None,
        deadline_ms: None,
    };
    match call("ferryd", ferryd, None, &req)? {
        PodResponse::Status {
            ready,
            msg,
            stale,
            cluster,
            ..
        } => Ok(FerrydStatus {
            ready,
            msg,
            stale,
            cluster: cluster.map(|c| *c),
        }),
        PodResponse::Error(e) => Err(ClientError::Refused {
            what: "ferryd",
            msg: format!("{} (code {})", e, e.code),
        }),
        other => Err(ClientError::Unexpected {
            what: "ferryd",
            asked: "STATUS",
            got: format!("{other:?}"),
        }),
    }
}

/// One object request to ferryd (`ferryctl apply`, `delete`, `get`). An
/// `Error` answer is [`ClientError::Refused`].
pub fn ferryd_objects(ferryd: &Path, req: ObjectsRequest) -> Result<ObjectsResponse, ClientError> {
    let envelope = ObjectsEnvelope { objects: req };
    match call::<_, ObjectsResponse>("ferryd", ferryd, None, &envelope)? {
        ObjectsResponse::Error { msg } => Err(ClientError::Refused {
            what: "ferryd",
            msg,
        }),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_socket_is_a_clear_error() {
        let e = tables(Path::new("/nonexistent/fyd/dataplane.sock")).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("cannot reach ferry-dataplane at /nonexistent/fyd/dataplane.sock"),
            "{text}"
        );
        let e = ferryd_status(Path::new("/nonexistent/fyd/ferryd.sock")).unwrap_err();
        assert!(e.to_string().contains("cannot reach ferryd"), "{e}");
    }
}
