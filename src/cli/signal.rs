//! Shutdown signals: the first SIGTERM or Ctrl-C starts a graceful
//! shutdown; a second one exits at once.

/// Resolves at the first SIGTERM or SIGINT.
pub async fn shutdown() {
    wait_for_signal().await;
    tracing::info!("signal received; shutting down (send another to exit at once)");
    tokio::spawn(async {
        wait_for_signal().await;
        eprintln!("cortex: second signal, exiting now");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
