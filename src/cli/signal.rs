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

/// Signal handlers registered at once (before anything slow starts), so a
/// signal during startup is seen rather than killing the process outright.
#[derive(Debug)]
pub struct Signals {
    #[cfg(unix)]
    streams: Vec<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Listens for SIGINT, SIGTERM and SIGHUP from now on.
    pub fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let streams = [
                SignalKind::interrupt(),
                SignalKind::terminate(),
                SignalKind::hangup(),
            ]
            .into_iter()
            .filter_map(|kind| signal(kind).ok())
            .collect();
            Self { streams }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Resolves at the next signal.
    pub async fn next(&mut self) {
        #[cfg(unix)]
        {
            let waits = self.streams.iter_mut().map(|s| Box::pin(s.recv()));
            let _ = futures::future::select_all(waits).await;
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }

    /// The first signal starts a graceful shutdown; from then on a second
    /// one exits at once (killing the registered children).
    pub async fn shutdown(mut self) {
        self.next().await;
        self.arm();
    }

    /// After a first signal: the next one exits at once.
    pub fn arm(mut self) {
        tracing::info!("signal received; shutting down (send another to exit at once)");
        tokio::spawn(async move {
            self.next().await;
            eprintln!("cortex: second signal, exiting now");
            for pid in CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            std::process::exit(130);
        });
    }
}

/// Resolves at the first SIGTERM, SIGINT or SIGHUP.
pub async fn shutdown() {
    Signals::listen().shutdown().await
}
