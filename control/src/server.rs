//! The pod-API server: one JSON request line in, one JSON response line out,
//! per connection, connections served concurrently.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_api::pod::{code, PodError, PodRequest, PodResponse};
use ferry_api::wire::MAX_MESSAGE;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::agent::Agent;
use crate::metrics::RequestCounters;

/// How long a client may take to send its request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

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
    #[error("set mode 0660 on {path}: {source}")]
    Chmod {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Bind the pod-API socket: parent directory created, a stale socket file
/// removed, mode 0660.
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| ServerError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => log::info!("removed stale socket {}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ServerError::RemoveStale {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    let listener = UnixListener::bind(path).map_err(|source| ServerError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(|source| {
        ServerError::Chmod {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(listener)
}

/// Accept connections forever, one task each; every answered request is
/// counted in `requests` (the metrics endpoint reports them).
pub async fn serve(listener: UnixListener, agent: Arc<Agent>, requests: Arc<RequestCounters>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let agent = Arc::clone(&agent);
                let requests = Arc::clone(&requests);
                tokio::spawn(async move {
                    if let Err(e) = serve_one(stream, &agent, &requests).await {
                        log::debug!("pod-API connection: {e}");
                    }
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
    reader: &mut BufReader<tokio::net::unix::ReadHalf<'_>>,
) -> Result<PodRequest, PodResponse> {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        REQUEST_TIMEOUT,
        (&mut *reader)
            .take(MAX_MESSAGE as u64 + 1)
            .read_until(b'\n', &mut buf),
    )
    .await;
    match read {
        Err(_) => Err(decode_error(format!(
            "no request line within {REQUEST_TIMEOUT:?}"
        ))),
        Ok(Err(e)) => Err(decode_error(format!("read: {e}"))),
        Ok(Ok(0)) => Err(decode_error("connection closed before a request".into())),
        Ok(Ok(_)) if buf.len() > MAX_MESSAGE => Err(decode_error(format!(
            "request longer than {MAX_MESSAGE} bytes"
        ))),
        Ok(Ok(_)) => serde_json::from_slice(&buf).map_err(|e| decode_error(e.to_string())),
    }
}

/// The CNI code a response stands for (0: success).
fn response_code(r: &PodResponse) -> u32 {
    match r {
        PodResponse::Ok { .. } | PodResponse::Status { ready: true, .. } => 0,
        PodResponse::Status { ready: false, .. } => code::NOT_AVAILABLE,
        PodResponse::Error(e) => e.code,
    }
}

async fn serve_one(
    mut stream: UnixStream,
    agent: &Agent,
    requests: &RequestCounters,
) -> std::io::Result<()> {
    let (r, mut w) = stream.split();
    let mut reader = BufReader::new(r);
    let (command, response) = match read_request(&mut reader).await {
        Ok(req) => {
            let command = format!("{:?}", req.command).to_uppercase();
            (command, agent.handle(req).await)
        }
        Err(resp) => ("INVALID".to_string(), resp),
    };
    requests.record(&command, response_code(&response));
    let mut line = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.shutdown().await
}
