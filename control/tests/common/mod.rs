//! Helpers the ferryd integration tests share.

/// Run `f` on a thread inside the network namespace at `path`, on a
/// current-thread runtime (so every task, and every thread it spawns,
/// starts in that namespace); a panic in `f` is the caller's.
pub fn in_netns<F, Fut>(path: String, f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let h = std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(f());
    });
    if let Err(p) = h.join() {
        std::panic::resume_unwind(p);
    }
}
