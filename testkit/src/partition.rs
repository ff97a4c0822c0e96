//! A TCP relay on loopback that can partition the link it carries: while
//! cut, nothing crosses in either direction and nothing is closed, so both
//! ends see a silent peer, as in a network partition (no FIN, no RST). New
//! connections are accepted by the kernel but not carried on until healed.
//! When healed, what was held crosses, and a side that closed meanwhile
//! closes the other.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// How often a held relay looks at the switch.
const POLL: Duration = Duration::from_millis(10);

/// A relay from a loopback port to `upstream`; stops when dropped (open
/// relays end with their connections).
#[derive(Debug)]
pub struct PartitionProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl PartitionProxy {
    /// Relays a fresh loopback port to `upstream` (`host:port`).
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("relay address");
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (cut_flag, stop_flag) = (cut.clone(), stop.clone());
        thread::spawn(move || {
            while !stop_flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        // Accepted sockets inherit non-blocking mode on some systems.
                        let _ = client.set_nonblocking(false);
                        let cut = cut_flag.clone();
                        let stop = stop_flag.clone();
                        thread::spawn(move || relay(client, upstream, cut, stop));
                    }
                    Err(_) => thread::sleep(POLL),
                }
            }
        });
        Self { addr, cut, stop }
    }

    /// `nats://127.0.0.1:<port>` of the relay.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Cuts the link: nothing crosses until [`heal`](Self::heal).
    pub fn partition(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Lets traffic cross again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for PartitionProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut.store(false, Ordering::SeqCst);
    }
}

fn hold(cut: &AtomicBool, stop: &AtomicBool) {
    while cut.load(Ordering::SeqCst) && !stop.load(Ordering::Relaxed) {
        thread::sleep(POLL);
    }
}

fn relay(client: TcpStream, upstream: SocketAddr, cut: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    hold(&cut, &stop);
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(client_in), Ok(server_in)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let back = {
        let (cut, stop) = (cut.clone(), stop.clone());
        thread::spawn(move || pump(server_in, client, &cut, &stop))
    };
    pump(client_in, server, &cut, &stop);
    let _ = back.join();
}

/// Copies `from` to `to`; each read waits out a partition before it is
/// written, so held bytes (and a held close) cross only once healed.
fn pump(mut from: TcpStream, mut to: TcpStream, cut: &AtomicBool, stop: &AtomicBool) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = loop {
            match from.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                read => break read.unwrap_or(0),
            }
        };
        hold(cut, stop);
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
            return;
        }
    }
}
