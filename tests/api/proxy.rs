//! A small TCP proxy for fault tests. It forwards loopback connections to a
//! real server and, at run time, can:
//! - `cut`: drop every open connection and refuse new ones (the server is down);
//! - `blackhole`: accept connections but forward nothing either way, and stall
//!   open ones mid-stream (a partition: connects and queries hang rather
//!   than fail);
//! - `set_delay`: forward each chunk only after a delay (a slow server or link);
//! - `reset`: abort every open connection with a TCP RST;
//! - `restore`: back to plain forwarding (held data then flows on, as after a
//!   healed partition).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// How often a held connection looks whether the black hole has closed.
const HOLD_POLL: Duration = Duration::from_millis(10);

pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

struct Shared {
    up: AtomicBool,
    blackhole: AtomicBool,
    delay_ms: AtomicU64,
    /// Bumped by `reset`: every connection task aborts with RST.
    resets: watch::Sender<u64>,
    connections: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    /// Waits while the black hole is open; false if a reset came meanwhile.
    async fn pass(&self, reset: &mut watch::Receiver<u64>) -> bool {
        loop {
            let delay = self.delay_ms.load(Ordering::SeqCst);
            if !self.blackhole.load(Ordering::SeqCst) && delay == 0 {
                return true;
            }
            let wait = if self.blackhole.load(Ordering::SeqCst) {
                HOLD_POLL
            } else {
                Duration::from_millis(delay)
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = reset.changed() => return false,
            }
            if !self.blackhole.load(Ordering::SeqCst) {
                return true;
            }
        }
    }
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            up: AtomicBool::new(true),
            blackhole: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            resets: watch::channel(0).0,
            connections: Mutex::new(Vec::new()),
        });
        let accept_shared = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !accept_shared.up.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let handle = tokio::spawn(forward(inbound, target, accept_shared.clone()));
                let mut connections = accept_shared.connections.lock().unwrap();
                connections.retain(|h| !h.is_finished());
                connections.push(handle);
            }
        });
        Self {
            port,
            shared,
            accept,
        }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.shared.up.store(false, Ordering::SeqCst);
        for handle in self.shared.connections.lock().unwrap().drain(..) {
            handle.abort();
        }
    }

    /// Accepts and holds connections without forwarding a byte; open
    /// connections stall at their next chunk.
    pub fn blackhole(&self) {
        self.shared.blackhole.store(true, Ordering::SeqCst);
    }

    /// Forwards each chunk after `delay` (zero: no delay). Applies to open
    /// connections too.
    pub fn set_delay(&self, delay: Duration) {
        self.shared
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Aborts every open connection with a TCP reset (new ones are accepted).
    pub fn reset(&self) {
        self.shared.resets.send_modify(|n| *n += 1);
    }

    /// Plain forwarding again: accepts, no black hole, no delay.
    pub fn restore(&self) {
        self.shared.blackhole.store(false, Ordering::SeqCst);
        self.shared.delay_ms.store(0, Ordering::SeqCst);
        self.shared.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Closes both sockets with RST (linger zero) rather than FIN.
fn abort_with_reset(a: TcpStream, b: Option<TcpStream>) {
    for stream in std::iter::once(a).chain(b) {
        let _ = stream.set_zero_linger();
    }
}

/// One proxied connection: both directions in one task, so a reset or a
/// black hole stops both at once.
async fn forward(mut inbound: TcpStream, target: SocketAddr, shared: Arc<Shared>) {
    let mut reset = shared.resets.subscribe();
    // A connection accepted inside the black hole is held before it reaches
    // the server, like a SYN lost in a partition.
    while shared.blackhole.load(Ordering::SeqCst) {
        tokio::select! {
            () = tokio::time::sleep(HOLD_POLL) => {}
            _ = reset.changed() => return abort_with_reset(inbound, None),
        }
    }
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
    let (mut up_buf, mut down_buf) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut up_open, mut down_open) = (true, true);
    while up_open || down_open {
        tokio::select! {
            read = inbound.read(&mut up_buf), if up_open => match read {
                Ok(0) | Err(_) => {
                    up_open = false;
                    let _ = outbound.shutdown().await;
                }
                Ok(n) => {
                    if !shared.pass(&mut reset).await {
                        return abort_with_reset(inbound, Some(outbound));
                    }
                    if outbound.write_all(&up_buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
            read = outbound.read(&mut down_buf), if down_open => match read {
                Ok(0) | Err(_) => {
                    down_open = false;
                    let _ = inbound.shutdown().await;
                }
                Ok(n) => {
                    if !shared.pass(&mut reset).await {
                        return abort_with_reset(inbound, Some(outbound));
                    }
                    if inbound.write_all(&down_buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
            _ = reset.changed() => return abort_with_reset(inbound, Some(outbound)),
        }
    }
}
