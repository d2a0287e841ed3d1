//! Leaving without breaking a connection (graceful upgrade and stop).
//!
//! Pingora closes every idle keep-alive connection at once when it broadcasts its shutdown.
//! A client (or HAProxy) that sends its next request on such a connection at that moment
//! sees it closed under the request, and HAProxy can resend only a request whose body still
//! fits its buffer (16 KiB): a larger PUT reaches the client as a broken connection. The way
//! out is the one HTTP/1.1 gives a server: before it goes, it answers every request with
//! `Connection: close`, so each connection ends after a complete answer, at a moment the
//! client knows of, and the next request opens a new connection (to the new process).
//!
//! The drain starts with the signal, before pingora's broadcast:
//! - `SIGQUIT` (graceful upgrade): pingora hands the listening sockets to the new process
//!   and waits 5 s before its broadcast; answers in those seconds close their connections.
//!   The process stays ready: both processes accept on the shared sockets for those
//!   seconds, and a health check reaching the old one must not take the replica out.
//! - `SIGTERM` (stop): `/readyz` answers 503 (`draining`) so load balancers take the replica
//!   out, and for `server.drain_seconds` the proxy keeps accepting and answering, each
//!   answer closing its connection; then pingora's graceful stop. A second `SIGTERM` ends
//!   the drain at once; `SIGINT` stops at once as before.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};

/// Where the process is on its way out; shared by the S3 service, the admin API and the
/// signal watcher.
#[derive(Debug, Default)]
pub struct Drain(AtomicU8);

const SERVING: u8 = 0;
const HANDING_OVER: u8 = 1;
const STOPPING: u8 = 2;

impl Drain {
    /// Answers close their connections (an upgrade or a stop has begun).
    pub fn closes_connections(&self) -> bool {
        self.0.load(Ordering::Relaxed) != SERVING
    }

    /// The process is stopping: load balancers should take it out (`/readyz` 503).
    pub fn stopping(&self) -> bool {
        self.0.load(Ordering::Relaxed) == STOPPING
    }

    fn enter(&self, state: u8) {
        self.0.fetch_max(state, Ordering::Relaxed);
    }
}

/// Pingora's shutdown signals (the same three as its own watcher), with the drain before.
pub struct DrainingSignals {
    pub drain: Arc<Drain>,
    /// How long a stop (`SIGTERM`) keeps serving, with `/readyz` 503, before pingora stops.
    pub stop_after: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for DrainingSignals {
    async fn recv(&self) -> ShutdownSignal {
        let mut quit = signal(SignalKind::quit()).expect("SIGQUIT handler");
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = quit.recv() => {
                self.drain.enter(HANDING_OVER);
                log::info!("SIGQUIT: handing the listening sockets over; answers close their connections until the old process stops");
                ShutdownSignal::GracefulUpgrade
            }
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = term.recv() => {
                self.drain.enter(STOPPING);
                log::info!("SIGTERM: draining for {:?} (/readyz 503, answers close their connections), then stopping", self.stop_after);
                tokio::select! {
                    _ = tokio::time::sleep(self.stop_after) => ShutdownSignal::GracefulTerminate,
                    _ = term.recv() => ShutdownSignal::GracefulTerminate,
                    _ = int.recv() => ShutdownSignal::FastShutdown,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_only_move_forward() {
        let d = Drain::default();
        assert!(!d.closes_connections() && !d.stopping());
        d.enter(HANDING_OVER);
        assert!(d.closes_connections() && !d.stopping());
        d.enter(STOPPING);
        assert!(d.closes_connections() && d.stopping());
        d.enter(HANDING_OVER);
        assert!(d.stopping(), "a stop is not undone by a later upgrade signal");
    }
}
