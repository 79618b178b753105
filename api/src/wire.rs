//! Newline-delimited JSON framing for ferry's Unix sockets (blocking std I/O).
//! Each message is one JSON document on one line; lines are bounded so a
//! misbehaving peer cannot make us buffer without limit.

use std::io::{self, BufRead, Write};

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
