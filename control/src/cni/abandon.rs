//! When a pod request stops being wanted.

use std::sync::Arc;
use std::time::Duration;

/// When a request stops being wanted: past the deadline the plugin sent,
/// or once its client hung up (the server watches the connection).
#[derive(Debug, Clone, Default)]
pub struct Abandon {
    deadline: Option<std::time::SystemTime>,
    hung_up: Arc<std::sync::atomic::AtomicBool>,
}

impl Abandon {
    /// `deadline_ms`: milliseconds since the Unix epoch, as in the request.
    pub fn new(deadline_ms: Option<u64>) -> Abandon {
        Abandon {
            deadline: deadline_ms.map(|ms| std::time::UNIX_EPOCH + Duration::from_millis(ms)),
            hung_up: Default::default(),
        }
    }

    /// The client closed its connection: nobody will read the answer.
    pub fn hang_up(&self) {
        // Relaxed: a flag read at step boundaries; no data hangs on it.
        self.hung_up
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Why the request is no longer wanted, if it is not.
    pub fn why(&self) -> Option<String> {
        if self.hung_up.load(std::sync::atomic::Ordering::Relaxed) {
            return Some("the plugin closed its connection before the answer".into());
        }
        match self.remaining() {
            Some(r) if r.is_zero() => Some("the plugin's deadline passed".into()),
            _ => None,
        }
    }

    /// Time left before the deadline (zero once past); `None` without one.
    pub fn remaining(&self) -> Option<Duration> {
        let d = self.deadline?;
        Some(
            d.duration_since(std::time::SystemTime::now())
                .unwrap_or(Duration::ZERO),
        )
    }
}
