//! Waiting for readiness: poll(2) over the descriptors of a worker's
//! queues, for its idle passes, and the eventfd that wakes it for a command.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
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

/// An eventfd a worker polls beside its queues, so a command from the
/// control thread wakes an idle worker at once instead of at the end of its
/// idle timeout (every port change waits for every worker: a barrier).
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    pub fn new() -> io::Result<Waker> {
        // SAFETY: eventfd(2) takes no pointers; a non-negative result is a
        // new descriptor that nothing else owns.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd(2) and is owned by no one else.
        Ok(Waker {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Make the descriptor readable (a full counter is still readable, so
    /// an error here loses no wake-up).
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Reset the counter (non-blocking: nothing to read is fine).
    pub fn clear(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64 from our own eventfd.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_makes_the_eventfd_readable_until_cleared() {
        let w = Waker::new().unwrap();
        let mut fds = [libc::pollfd {
            fd: w.fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        assert_eq!(poll(&mut fds, Duration::ZERO).unwrap(), 0);
        w.wake();
        w.wake();
        assert_eq!(poll(&mut fds, Duration::from_secs(1)).unwrap(), 1);
        w.clear();
        fds[0].revents = 0;
        assert_eq!(poll(&mut fds, Duration::ZERO).unwrap(), 0);
    }
}
