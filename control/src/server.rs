//! The pod-API server: one JSON request line in, one JSON response line out,
//! per connection, connections served concurrently.
//!
//! Who may speak: the socket is mode 0600 and every connection's peer
//! credentials are checked (uid 0 or ferryd's own uid), at most
//! [`MAX_CONNECTIONS`] are served at once, and a request line is at most
//! [`MAX_REQUEST`] bytes. Binding never removes the socket of a ferryd
//! that still answers on it. While a request is served, the connection is
//! watched: a client that hangs up abandons its ADD, which is rolled back.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_api::objects::{ObjectsEnvelope, ObjectsRequest, ObjectsResponse};
use ferry_api::pod::{code, Command, PodError, PodRequest, PodResponse};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use crate::cluster::member::Member;
use crate::cni::{Abandon, Agent};
use crate::metrics::RequestCounters;

/// How long a client may take to send its request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// Longest request line (a CNI config with a prevResult is a few KiB).
pub const MAX_REQUEST: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("create socket directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("remove stale socket {path}: {source}")]
    RemoveStale {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bind {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("set mode 0600 on {path}: {source}")]
    Chmod {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is served by a running process (another ferryd?); refusing to take it over")]
    InUse { path: PathBuf },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
}

/// Whether a peer with these credentials may use ferryd's socket.
pub fn peer_allowed(peer_uid: u32) -> bool {
    peer_uid == 0 || peer_uid == nix::unistd::geteuid().as_raw()
}

/// Bind the pod-API socket: parent directory created, a stale socket file
/// removed (not a live one), mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    use ferry_api::wire::BindError as B;
    let (listener, removed) = ferry_api::wire::bind_private(path).map_err(|e| match e {
        B::Dir { path, source } => ServerError::CreateDir { path, source },
        B::InUse { path } => ServerError::InUse { path },
        B::NotASocket { path } => ServerError::NotASocket { path },
        B::Stale { path, source } => ServerError::RemoveStale { path, source },
        B::Bind { path, source } => ServerError::Bind { path, source },
        B::Chmod { path, source } => ServerError::Chmod { path, source },
    })?;
    if removed {
        log::info!("removed stale socket {}", path.display());
    }
    let bind_err = |source| ServerError::Bind {
        path: path.to_path_buf(),
        source,
    };
    listener.set_nonblocking(true).map_err(bind_err)?;
    UnixListener::from_std(listener).map_err(bind_err)
}

/// Who answers pod-API requests: the [`Agent`], or while the node joins
/// its cluster, [`Joining`].
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle_watched(&self, req: PodRequest, abandon: &Abandon) -> PodResponse;
    /// `ferryctl apply`/`delete`/`get`.
    async fn handle_objects(&self, req: ObjectsRequest) -> ObjectsResponse;
}

#[async_trait::async_trait]
impl Handler for Agent {
    async fn handle_watched(&self, req: PodRequest, abandon: &Abandon) -> PodResponse {
        Agent::handle_watched(self, req, abandon).await
    }

    async fn handle_objects(&self, req: ObjectsRequest) -> ObjectsResponse {
        self.objects(req).await
    }
}

/// The answers of a ferryd that holds no block yet: STATUS says why (code
/// 50, with the datastore's error), everything else is "try again later"
/// (code 11): no address can be given out before the node has a block.
pub struct Joining(pub Arc<Member>);

#[async_trait::async_trait]
impl Handler for Joining {
    async fn handle_watched(&self, req: PodRequest, _abandon: &Abandon) -> PodResponse {
        let view = self.0.view();
        let why = format!(
            "ferryd is joining the cluster through {} and holds no pod CIDR yet: {}",
            view.datastore,
            view.error.as_deref().unwrap_or("waiting for the datastore")
        );
        match req.command {
            Command::Status => PodResponse::Status {
                ready: false,
                msg: why,
                code: code::NOT_AVAILABLE,
                stale: Vec::new(),
                cluster: Some(Box::new(view)),
            },
            _ => PodResponse::Error(PodError {
                code: code::TRY_AGAIN_LATER,
                msg: "ferryd is joining the cluster".into(),
                details: why,
            }),
        }
    }

    async fn handle_objects(&self, _req: ObjectsRequest) -> ObjectsResponse {
        ObjectsResponse::Error {
            msg: "ferryd is joining the cluster; try again once `ferryctl status` says ready"
                .into(),
        }
    }
}

/// What a request line is: the CNI binary's, or ferryctl's object request
/// (a JSON object whose only key is `objects`; no pod request has it).
enum Incoming {
    Pod(Box<PodRequest>),
    Objects(ObjectsRequest),
}

/// Accept connections until dropped, one task each; every answered
/// request is counted in `requests` (the metrics endpoint reports them).
pub async fn serve<H: Handler>(
    listener: &UnixListener,
    agent: Arc<H>,
    requests: Arc<RequestCounters>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Accept only with a slot free: excess clients wait in the backlog
        // (the plugin's connect is bounded) instead of costing a task each.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                match stream.peer_cred() {
                    Ok(c) if peer_allowed(c.uid()) => {}
                    Ok(c) => {
                        log::warn!(
                            "pod-API connection from uid {} (pid {:?}) refused: only root may ask",
                            c.uid(),
                            c.pid()
                        );
                        continue;
                    }
                    Err(e) => {
                        log::warn!("pod-API connection refused: peer credentials: {e}");
                        continue;
                    }
                }
                let agent = Arc::clone(&agent);
                let requests = Arc::clone(&requests);
                tokio::spawn(async move {
                    if let Err(e) = serve_one(stream, &*agent, &requests).await {
                        log::debug!("pod-API connection: {e}");
                    }
                    drop(slot);
                });
            }
            Err(e) => {
                // EMFILE and the like: back off a little instead of spinning.
                log::warn!("accept on pod-API socket: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn decode_error(details: String) -> PodResponse {
    PodResponse::Error(PodError {
        code: code::DECODE,
        msg: "malformed pod-API request".into(),
        details,
    })
}

/// Read one request line (bounded in size and time) and decode it.
async fn read_request(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> Result<Incoming, PodResponse> {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        REQUEST_TIMEOUT,
        (&mut *reader)
            .take(MAX_REQUEST as u64 + 1)
            .read_until(b'\n', &mut buf),
    )
    .await;
    match read {
        Err(_) => Err(decode_error(format!(
            "no request line within {REQUEST_TIMEOUT:?}"
        ))),
        Ok(Err(e)) => Err(decode_error(format!("read: {e}"))),
        Ok(Ok(0)) => Err(decode_error("connection closed before a request".into())),
        Ok(Ok(_)) if buf.len() > MAX_REQUEST => Err(decode_error(format!(
            "request longer than {MAX_REQUEST} bytes"
        ))),
        Ok(Ok(_)) => decode_request(&buf),
    }
}

fn decode_request(line: &[u8]) -> Result<Incoming, PodResponse> {
    let v: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| decode_error(e.to_string()))?;
    let is_objects = v
        .as_object()
        .is_some_and(|m| m.len() == 1 && m.contains_key("objects"));
    if is_objects {
        serde_json::from_value::<ObjectsEnvelope>(v)
            .map(|e| Incoming::Objects(e.objects))
            .map_err(|e| decode_error(e.to_string()))
    } else {
        serde_json::from_value(v)
            .map(|r| Incoming::Pod(Box::new(r)))
            .map_err(|e| decode_error(e.to_string()))
    }
}

/// The CNI code a response stands for (0: success).
fn response_code(r: &PodResponse) -> u32 {
    match r {
        PodResponse::Ok { .. } | PodResponse::Status { ready: true, .. } => 0,
        PodResponse::Status {
            ready: false, code, ..
        } if *code != 0 => *code,
        PodResponse::Status { ready: false, .. } => code::NOT_AVAILABLE,
        PodResponse::Error(e) => e.code,
    }
}

async fn serve_one<H: Handler>(
    stream: UnixStream,
    agent: &H,
    requests: &RequestCounters,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r);
    let (command, response) = match read_request(&mut reader).await {
        Ok(Incoming::Objects(req)) => {
            let response = agent.handle_objects(req).await;
            let code = match response {
                ObjectsResponse::Error { .. } => code::INVALID_CONFIG,
                _ => 0,
            };
            requests.record("OBJECTS", code);
            let mut line = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
            line.push(b'\n');
            w.write_all(&line).await?;
            return w.shutdown().await;
        }
        Ok(Incoming::Pod(req)) => {
            let req = *req;
            let command = format!("{:?}", req.command).to_uppercase();
            let abandon = Abandon::new(req.deadline_ms);
            // The client sends one line and then only waits: anything
            // readable now is its hang-up (EOF) or an error.
            let watch = {
                let abandon = abandon.clone();
                tokio::spawn(async move {
                    let mut byte = [0u8; 1];
                    if let Ok(0) | Err(_) = reader.read(&mut byte).await {
                        abandon.hang_up();
                    }
                })
            };
            let response = agent.handle_watched(req, &abandon).await;
            watch.abort();
            (command, response)
        }
        Err(resp) => ("INVALID".to_string(), resp),
    };
    requests.record(&command, response_code(&response));
    let mut line = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.shutdown().await
}
