//! Shutdown signals: the first SIGTERM or Ctrl-C starts a graceful
//! shutdown; a second one exits at once.

use std::sync::Mutex;

/// Child processes killed on the way out when a second signal cuts the
/// graceful shutdown short (a `cortex up` nats-server, in its own process
/// group so that the terminal's Ctrl-C does not reach it first).
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Kill process `pid` if a second signal makes `cortex` exit at once.
pub fn kill_on_exit(pid: u32) {
    CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
}

/// Resolves at the first SIGTERM or SIGINT.
pub async fn shutdown() {
    wait_for_signal().await;
    tracing::info!("signal received; shutting down (send another to exit at once)");
    tokio::spawn(async {
        wait_for_signal().await;
        eprintln!("cortex: second signal, exiting now");
        for pid in CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
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
