//! Newline-delimited JSON framing for ferry's Unix sockets (blocking std I/O).
//! Each message is one JSON document on one line; lines are bounded so a
//! misbehaving peer cannot make us buffer without limit.

use std::io::{self, BufRead, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest message accepted (a full Sync of 100k endpoints fits).
pub const MAX_MESSAGE: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("i/o on socket: {0}")]
    Io(#[from] io::Error),
    #[error("peer closed the connection")]
    Closed,
    #[error("message longer than {MAX_MESSAGE} bytes")]
    TooLong,
    #[error("malformed message: {0}")]
    Decode(#[from] serde_json::Error),
}

/// Why a daemon's socket could not be bound ([`bind_private`]).
#[derive(Debug)]
pub enum BindError {
    /// Creating the socket's directory failed.
    Dir {
        path: PathBuf,
        source: io::Error,
    },
    /// A live process still answers on the socket.
    InUse {
        path: PathBuf,
    },
    /// Something that is not a socket is at the path.
    NotASocket {
        path: PathBuf,
    },
    /// Removing a stale socket file failed.
    Stale {
        path: PathBuf,
        source: io::Error,
    },
    Bind {
        path: PathBuf,
        source: io::Error,
    },
    Chmod {
        path: PathBuf,
        source: io::Error,
    },
}

/// Bind a daemon's Unix socket at `path`, private to its owner: create the
/// directory, replace a stale socket file (one nothing answers on), refuse
/// a live one or a file that is not a socket, then mode 0600. Returns the
/// listener and whether a stale socket was removed. Both ferryd and
/// ferry-dataplane bind this way.
pub fn bind_private(path: &Path) -> Result<(UnixListener, bool), BindError> {
    let at = || path.to_path_buf();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| BindError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let mut removed = false;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(BindError::InUse { path: at() });
            }
            std::fs::remove_file(path).map_err(|source| BindError::Stale { path: at(), source })?;
            removed = true;
        }
        Ok(_) => return Err(BindError::NotASocket { path: at() }),
        Err(_) => {}
    }
    let listener =
        UnixListener::bind(path).map_err(|source| BindError::Bind { path: at(), source })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|source| BindError::Chmod { path: at(), source })?;
    Ok((listener, removed))
}

pub fn write_message<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), WireError> {
    let mut line = serde_json::to_vec(msg)?;
    line.push(b'\n');
    w.write_all(&line)?;
    w.flush()?;
    Ok(())
}

pub fn read_message<R: BufRead, T: DeserializeOwned>(r: &mut R) -> Result<T, WireError> {
    let mut line = Vec::new();
    let n = <&mut R as io::Read>::take(r, MAX_MESSAGE as u64 + 1).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(WireError::Closed);
    }
    if line.len() > MAX_MESSAGE {
        return Err(WireError::TooLong);
    }
    Ok(serde_json::from_slice(&line)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Request;

    #[test]
    fn frames_round_trip_and_reject_garbage() {
        let mut buf = Vec::new();
        write_message(&mut buf, &Request::Stats).unwrap();
        write_message(&mut buf, &Request::Tables).unwrap();
        buf.extend_from_slice(b"{not json}\n");
        let mut r = io::BufReader::new(&buf[..]);
        assert_eq!(read_message::<_, Request>(&mut r).unwrap(), Request::Stats);
        assert_eq!(read_message::<_, Request>(&mut r).unwrap(), Request::Tables);
        assert!(matches!(
            read_message::<_, Request>(&mut r),
            Err(WireError::Decode(_))
        ));
        assert!(matches!(
            read_message::<_, Request>(&mut r),
            Err(WireError::Closed)
        ));
    }
}
