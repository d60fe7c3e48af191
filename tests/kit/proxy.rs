//! A TCP proxy in front of a dependency (PostgreSQL, Redis) for fault
//! injection. It forwards loopback connections to the real server and, at
//! run time, can be switched to a [`Mode`]:
//! - [`Mode::Cut`]: open connections are dropped and new ones closed at once
//!   (a crashed or restarting server);
//! - [`Mode::Blackhole`]: connections are accepted but no byte gets through,
//!   either way; open ones stall mid-stream and new ones never reach the
//!   server (a partition: connects and queries hang rather than fail). When
//!   the mode changes the held bytes flow on, in order (a healed partition:
//!   TCP would have kept retransmitting them);
//! - [`Mode::Slow`]: every chunk is delivered that much later than it
//!   arrived (a delay line: latency is added, throughput is kept);
//!
//! and [`Proxy::reset`] aborts every open connection with a TCP RST.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{ReadHalf, WriteHalf},
        TcpListener, TcpStream,
    },
    sync::{mpsc, watch},
    task::JoinHandle,
};

/// What a [`Proxy`] does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forwards bytes as they come.
    Up,
    /// Drops open connections; accepts new ones and closes them at once.
    Cut,
    /// Holds every byte, either way, until the mode changes.
    Blackhole,
    /// Delivers every chunk this much later than it arrived.
    Slow(Duration),
}

/// Bytes read per chunk.
const CHUNK: usize = 16 * 1024;

pub struct Proxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
    /// Bumped by [`Proxy::reset`]: every connection aborts with a RST.
    resets: watch::Sender<u64>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port for the proxy");
        let port = listener
            .local_addr()
            .expect("a bound listener has an address")
            .port();
        let mode = watch::channel(Mode::Up).0;
        let resets = watch::channel(0).0;
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (accept_mode, accept_resets, accept_connections) =
            (mode.clone(), resets.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                // The mode is read under the lock `cut` drains with, so no
                // connection slips past a cut.
                let mut open = lock(&accept_connections);
                if *accept_mode.borrow() == Mode::Cut {
                    drop(inbound);
                    continue;
                }
                open.retain(|h| !h.is_finished());
                open.push(tokio::spawn(forward(
                    inbound,
                    target,
                    accept_mode.subscribe(),
                    accept_resets.subscribe(),
                )));
            }
        });
        Self {
            port,
            mode,
            resets,
            connections,
            accept,
        }
    }

    /// Switches to `mode`; open connections follow at their next chunk
    /// (all of them are dropped at once by [`Mode::Cut`]).
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
        if mode == Mode::Cut {
            for handle in lock(&self.connections).drain(..) {
                handle.abort();
            }
        }
    }

    /// [`Mode::Cut`]: the server is down.
    pub fn cut(&self) {
        self.set(Mode::Cut);
    }

    /// [`Mode::Blackhole`]: a partition.
    pub fn blackhole(&self) {
        self.set(Mode::Blackhole);
    }

    /// [`Mode::Slow`]: a slow server or link.
    pub fn slow(&self, delay: Duration) {
        self.set(Mode::Slow(delay));
    }

    /// [`Mode::Up`]: plain forwarding again.
    pub fn restore(&self) {
        self.set(Mode::Up);
    }

    /// Aborts every open connection with a TCP reset (new ones are accepted).
    pub fn reset(&self) {
        self.resets.send_modify(|n| *n += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for handle in lock(&self.connections).drain(..) {
            handle.abort();
        }
    }
}

/// The open connections; a panic elsewhere does not make them unreachable.
fn lock(connections: &Mutex<Vec<JoinHandle<()>>>) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
    connections.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One proxied connection: both directions, until both have closed or a
/// reset aborts them together.
async fn forward(
    inbound: TcpStream,
    target: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    mut resets: watch::Receiver<u64>,
) {
    // A connection accepted inside the black hole is held before it reaches
    // the server, like a SYN lost in a partition.
    while *mode.borrow_and_update() == Mode::Blackhole {
        tokio::select! {
            changed = mode.changed() => if changed.is_err() { return },
            Ok(()) = resets.changed() => return abort_with_reset(&[&inbound]),
        }
    }
    let Ok(outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
    let (mut inbound, mut outbound) = (inbound, outbound);
    let reset = {
        let (in_read, in_write) = inbound.split();
        let (out_read, out_write) = outbound.split();
        let both = async {
            tokio::join!(
                pump(in_read, out_write, mode.clone()),
                pump(out_read, in_write, mode),
            )
        };
        tokio::select! {
            _ = both => false,
            Ok(()) = resets.changed() => true,
        }
    };
    if reset {
        abort_with_reset(&[&inbound, &outbound]);
    }
}

/// Sets linger to zero, so that closing the sockets (when the caller drops
/// them) sends a RST rather than a FIN.
fn abort_with_reset(streams: &[&TcpStream]) {
    for stream in streams {
        let _ = stream.set_zero_linger();
    }
}

/// One direction of a connection: a reader stamping each chunk with its
/// arrival time, and a writer delivering it once the mode lets it through.
/// The end of the source is passed on as a half-close, as TCP does.
async fn pump(mut from: ReadHalf<'_>, mut to: WriteHalf<'_>, mut mode: watch::Receiver<Mode>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        loop {
            let mut chunk = vec![0u8; CHUNK];
            match from.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    chunk.truncate(n);
                    if tx.send((Instant::now(), chunk)).is_err() {
                        break;
                    }
                }
            }
        }
    };
    let write = async move {
        while let Some((arrived, chunk)) = rx.recv().await {
            if !due(&mut mode, arrived).await || to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

/// Waits until a chunk that arrived at `arrived` may go: at once when up,
/// its delay after arrival when slow, not while black-holed (a mode change
/// while waiting re-evaluates it). False when the proxy is gone.
async fn due(mode: &mut watch::Receiver<Mode>, arrived: Instant) -> bool {
    loop {
        let current = *mode.borrow_and_update();
        match current {
            // Cut connections are aborted; nothing waits for them.
            Mode::Up | Mode::Cut => return true,
            Mode::Slow(delay) => tokio::select! {
                () = tokio::time::sleep_until((arrived + delay).into()) => return true,
                changed = mode.changed() => if changed.is_err() { return false },
            },
            Mode::Blackhole => {
                if mode.changed().await.is_err() {
                    return false;
                }
            }
        }
    }
}
