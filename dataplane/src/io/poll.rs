//! Waiting for readiness: poll(2) over the descriptors of a worker's
//! queues, for its idle passes.

use std::io;
use std::time::Duration;

/// Sleep until one of `fds` is ready or `timeout` passes (rounded down to
/// milliseconds); how many are ready (their `revents` set).
pub fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<usize> {
    let timeout = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()`
    // initialised pollfd structs for the duration of the call; poll(2)
    // only writes their `revents`.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as usize)
}
