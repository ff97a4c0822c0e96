//! Free loopback ports.

use std::net::TcpListener;

/// Reserves `n` distinct free ports on 127.0.0.1. The listeners are held
/// together so the kernel hands out different ports, then released for the
/// server to bind; the window for a clash is milliseconds.
pub(crate) fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// One free port on 127.0.0.1, for a listener a test starts elsewhere
/// (another process binds it a moment later).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}
