//! Opening a path that should be a network namespace, without trusting
//! it: `O_NONBLOCK` (a FIFO or a device there opens at once instead of
//! blocking the caller), then checked to be an nsfs file (`fstatfs`) of a
//! *network* namespace (`NS_GET_NSTYPE`). ferryd and the dataplane each add
//! their own policy on top (which namespaces no pod may name, which one the
//! path must still be).

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

/// `NSFS_MAGIC` (linux/magic.h).
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// `NS_GET_NSTYPE` (linux/nsfs.h): `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Why a path is not an open network namespace.
#[derive(Debug)]
pub enum OpenError {
    /// `open` or `fstat` failed (`NotFound`: nothing there).
    Io(io::Error),
    /// It opened, but is not a network namespace: what it is instead.
    NotNetns(String),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Io(e) => write!(f, "cannot open it: {e}"),
            OpenError::NotNetns(what) => write!(f, "not a network namespace: {what}"),
        }
    }
}

/// Open `path` as a network namespace: the file and its identity (device
/// and inode of the nsfs file, as `stat` shows them).
pub fn open(path: &str) -> Result<(File, u64, u64), OpenError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(OpenError::Io)?;
    // SAFETY: all-zero is a valid `statfs` (plain integers), filled by the
    // call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a writable statfs and the fd is open for the call.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(OpenError::NotNetns(format!(
            "fstatfs: {}",
            io::Error::last_os_error()
        )));
    }
    let magic = st.f_type as i64;
    if magic != NSFS_MAGIC {
        return Err(OpenError::NotNetns(format!(
            "not a namespace file (filesystem magic {magic:#x}, nsfs is {NSFS_MAGIC:#x})"
        )));
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd, which
    // `file` keeps open for the call.
    let nstype = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    match nstype {
        t if t == libc::CLONE_NEWNET => {}
        t if t < 0 => {
            return Err(OpenError::NotNetns(format!(
                "NS_GET_NSTYPE: {}",
                io::Error::last_os_error()
            )))
        }
        t => {
            return Err(OpenError::NotNetns(format!(
                "a namespace of another type ({t:#x})"
            )))
        }
    }
    let md = file.metadata().map_err(OpenError::Io)?;
    Ok((file, md.dev(), md.ino()))
}
