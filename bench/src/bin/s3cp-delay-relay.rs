//! A TCP relay that delays every byte by half a round trip in each direction: a remote
//! backend's latency for benchmarks on one machine (`bench/remote.py`), where the kernel has
//! no netem qdisc. Bytes pass through untouched (TLS stays end to end between the client and
//! the server behind the relay).
//!
//! What it models, per connection: the TCP handshake (the first client bytes leave one
//! round trip after the connection opens), a one-way delay of RTT/2 on every byte in both
//! directions, and a bounded window (at most `--window` bytes in flight per direction, as a
//! TCP receive window bounds a real connection: throughput per connection ≤ window / RTT).
//! Not modelled: slow start, loss, bandwidth limits.
//!
//!   s3cp-delay-relay --listen 127.0.0.1:9000 --upstream 10.231.14.2:9443 --rtt 30ms

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

#[derive(Parser, Debug)]
#[command(name = "s3cp-delay-relay", about = "TCP relay adding a round-trip delay (RTT/2 each way) for benchmarks")]
struct Args {
    /// Address to listen on (127.0.0.1:PORT).
    #[arg(long)]
    listen: SocketAddr,
    /// Address every accepted connection is relayed to.
    #[arg(long)]
    upstream: SocketAddr,
    /// Round-trip time added: each direction is delayed by half of it (e.g. 30ms).
    #[arg(long, value_parser = parse_ms)]
    rtt: Duration,
    /// Most bytes in flight per direction and connection (KiB).
    #[arg(long, default_value_t = 4096)]
    window_kib: u32,
    /// Exit after this long (a benchmark's relay never outlives it).
    #[arg(long, value_parser = parse_ms, default_value = "3600000ms")]
    max_lifetime: Duration,
}

fn parse_ms(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse::<u64>().map(Duration::from_millis).map_err(|e| format!("{s}: {e}"));
    }
    if let Some(secs) = s.strip_suffix('s') {
        return secs.parse::<u64>().map(Duration::from_secs).map_err(|e| format!("{s}: {e}"));
    }
    Err(format!("{s}: a duration like 30ms or 2s"))
}

/// Bytes read at `due - one_way`, to be written at `due`; `None` for the end of the stream.
struct Piece {
    due: Instant,
    data: Option<Bytes>,
}

const READ_SIZE: usize = 64 << 10;

/// Reads `src` and hands each piece to the writer with its due time, holding window permits
/// (one per byte) for the bytes not yet written.
async fn read_side(mut src: OwnedReadHalf, tx: mpsc::UnboundedSender<Piece>, one_way: Duration, window: Arc<Semaphore>) {
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    loop {
        // Wait for room in the window before reading more (backpressure to the sender).
        let Ok(permit) = window.clone().acquire_many_owned(READ_SIZE as u32).await else { return };
        permit.forget();
        buf.reserve(READ_SIZE);
        let n = match (&mut src).take(READ_SIZE as u64).read_buf(&mut buf).await {
            Ok(n) => n,
            Err(_) => 0,
        };
        // Only the bytes read stay in flight: a small write costs the window what it carries.
        window.add_permits(READ_SIZE - n);
        let due = Instant::now() + one_way;
        if n == 0 {
            let _ = tx.send(Piece { due, data: None });
            return;
        }
        if tx.send(Piece { due, data: Some(buf.split().freeze()) }).is_err() {
            return;
        }
    }
}

/// Writes each piece at its due time, then gives its window permits back.
async fn write_side(mut dst: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Piece>, window: Arc<Semaphore>) {
    while let Some(piece) = rx.recv().await {
        tokio::time::sleep_until(piece.due).await;
        let Some(data) = piece.data else {
            let _ = dst.shutdown().await;
            return;
        };
        if dst.write_all(&data).await.is_err() {
            return;
        }
        window.add_permits(data.len());
    }
}

fn pump(src: OwnedReadHalf, dst: OwnedWriteHalf, one_way: Duration, window_kib: u32) -> tokio::task::JoinHandle<()> {
    let window = Arc::new(Semaphore::new((window_kib as usize * 1024).max(READ_SIZE)));
    let (tx, rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_side(src, tx, one_way, window.clone()));
    tokio::spawn(async move {
        write_side(dst, rx, window).await;
        reader.abort();
    })
}

async fn relay(down: TcpStream, args: Arc<Args>) {
    let Ok(up) = TcpStream::connect(args.upstream).await else { return };
    let _ = down.set_nodelay(true);
    let _ = up.set_nodelay(true);
    // The TCP handshake over the delayed path: SYN and SYN-ACK take one round trip.
    tokio::time::sleep(args.rtt).await;
    let one_way = args.rtt / 2;
    let (down_r, down_w) = down.into_split();
    let (up_r, up_w) = up.into_split();
    let a = pump(down_r, up_w, one_way, args.window_kib);
    let b = pump(up_r, down_w, one_way, args.window_kib);
    let _ = tokio::join!(a, b);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args = Arc::new(Args::parse());
    let listener = match TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("s3cp-delay-relay: cannot listen on {}: {e}", args.listen);
            std::process::exit(1);
        }
    };
    eprintln!("s3cp-delay-relay: {} -> {} with {:?} round trip", args.listen, args.upstream, args.rtt);
    let deadline = tokio::time::sleep(args.max_lifetime);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((down, _)) = accepted {
                    tokio::spawn(relay(down, args.clone()));
                }
            }
            _ = &mut deadline => {
                eprintln!("s3cp-delay-relay: --max-lifetime reached");
                return;
            }
        }
    }
}
