//! The stop signals of a serving `tag-server`: the first SIGINT or SIGTERM
//! stops it gracefully, a second one ends the process at once with code 130.

/// Resolves at the next SIGINT or SIGTERM.
async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
}

/// Resolves at the first stop signal (pass it to [`crate::server::run`] as
/// its shutdown future) and from then on watches for a second one, which
/// exits the process with code 130 without waiting for anything.
pub async fn shutdown_signal() {
    stop_signal().await;
    // The first signal stops gracefully (running tasks reach a safe point
    // and stay queued); a second one exits at once. Nothing is lost either
    // way: a run's writes are one transaction, and its task is taken up
    // again after its lease.
    tokio::spawn(async {
        stop_signal().await;
        tracing::warn!("second stop signal: exiting now");
        // At once: no exit handlers (log lines are written unbuffered).
        // SAFETY: _exit only ends the process.
        unsafe { libc::_exit(130) };
    });
}
