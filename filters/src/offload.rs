//! Per-request stream work moved to the crypto pool one piece behind, so that a single
//! connection can keep a second core busy. Used for the payload digests (SHA-256 ≈ 1.8 GB/s,
//! MD5 ≈ 0.6 GB/s per core), not for the chunk cipher: OpenSSL's ChaCha20-Poly1305 seals
//! 64 KiB in about 16 µs, too little to pay for a hand-off (measured: one 64 MiB GET went
//! from ~500 to 390–460 MiB/s when its decryption was offloaded).
//!
//! A [`Behind`] owns one stateful step (a hasher). Feeding piece N first waits for the job
//! of piece N-1, then starts piece N on the pool and returns: while the pool works on piece N, the request's own thread forwards piece N-1 and
//! reads piece N+1. Order is kept (one job at a time per `Behind`), pieces are shared `Bytes`
//! (never copied), and the only wait is for the previous piece's job.
//!
//! Offloading pays only while cores would otherwise idle. When more streams are live than
//! twice the pool's threads (eight signed uploads on two cores), every core already has a
//! request of its own, and hand-offs would only add wake-ups, context switches and cache
//! misses, so each piece is processed where it arrived. A job also starts only when a pool
//! thread is idle.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Condvar, Mutex, OnceLock};

use bytes::Bytes;

/// Pieces smaller than this run in place: a job costs a few microseconds.
pub const OFFLOAD_MIN: usize = 16 * 1024;

/// Jobs started and not yet finished, over all requests.
static JOBS: AtomicUsize = AtomicUsize::new(0);

/// Live [`Behind`] streams, over all requests.
static STREAMS: AtomicUsize = AtomicUsize::new(0);

/// A job for the pool.
type Job = Box<dyn FnOnce() + Send>;

/// The crypto pool: one thread per core, named `crypto-N` (so per-thread CPU figures show
/// the offloaded work), taking jobs from one FIFO queue.
///
/// Not rayon: an idle rayon worker calls `sched_yield` about 32 times before it sleeps, and
/// this pool is idle between most jobs (a 64 KiB piece every few hundred microseconds), so
/// that spinning was 17 % of the proxy's CPU on signed uploads (perf, PUT 4 MiB c=8) while
/// Garage waited for the cores. An idle thread here sleeps on a condition variable at once;
/// a job costs one futex wake, small beside the ~35–110 µs a 64 KiB piece takes to hash.
pub(crate) struct Pool {
    queue: Mutex<VecDeque<Job>>,
    work: Condvar,
    threads: usize,
}

impl Pool {
    pub(crate) fn current_num_threads(&self) -> usize {
        self.threads
    }

    pub(crate) fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).push_back(Box::new(job));
        self.work.notify_one();
    }

    fn run(&self) {
        loop {
            let job = {
                let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    match queue.pop_front() {
                        Some(job) => break job,
                        None => queue = self.work.wait(queue).unwrap_or_else(|p| p.into_inner()),
                    }
                }
            };
            // A step that panics is a bug that leaves its request waiting for a state that
            // never comes back: end the process (as rayon's pool did), do not hang.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                log::error!("a crypto pool job panicked; aborting");
                std::process::abort();
            }
        }
    }
}

/// The pool, created on first use: after pingora has daemonized, since a fork keeps no
/// threads.
pub(crate) fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        let pool: &'static Pool = Box::leak(Box::new(Pool { queue: Mutex::new(VecDeque::new()), work: Condvar::new(), threads }));
        for i in 0..threads {
            std::thread::Builder::new()
                .name(format!("crypto-{i}"))
                .spawn(move || pool.run())
                .expect("starting the crypto thread pool");
        }
        pool
    })
}

/// Takes a place on the pool if few streams are live and a pool thread is idle.
fn claim_job() -> bool {
    let threads = pool().current_num_threads();
    STREAMS.load(Ordering::Relaxed) <= 2 * threads
        && JOBS.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < threads).then_some(n + 1)).is_ok()
}

/// Gives the place back when the job ends, also if it panics.
struct JobPlace;

impl Drop for JobPlace {
    fn drop(&mut self) {
        JOBS.fetch_sub(1, Ordering::AcqRel);
    }
}

enum Slot<S> {
    Idle(S),
    /// A job holds the state and sends it back when done. (The Mutex only makes the
    /// receiver Sync, as pingora wants of a request context.)
    Busy(Mutex<mpsc::Receiver<S>>),
}

/// A stateful step over a stream of pieces, run one piece behind on the crypto pool.
pub struct Behind<S> {
    slot: Option<Slot<S>>,
    step: fn(&mut S, &[u8]),
}

impl<S: Send + 'static> Behind<S> {
    pub fn new(state: S, step: fn(&mut S, &[u8])) -> Self {
        STREAMS.fetch_add(1, Ordering::Relaxed);
        Self { slot: Some(Slot::Idle(state)), step }
    }

    /// Runs the step over `piece`, after the previous piece's job (if one is in flight).
    pub fn feed(&mut self, piece: Bytes) {
        let mut state = self.settle();
        let step = self.step;
        if piece.len() >= OFFLOAD_MIN && claim_job() {
            let (done, back) = mpsc::sync_channel(1);
            pool().spawn(move || {
                let _place = JobPlace;
                step(&mut state, &piece);
                let _ = done.send(state);
            });
            self.slot = Some(Slot::Busy(Mutex::new(back)));
        } else {
            step(&mut state, &piece);
            self.slot = Some(Slot::Idle(state));
        }
    }

    /// Waits for the job in flight (if any) and returns the state.
    pub fn finish(mut self) -> S {
        self.settle()
    }

    fn settle(&mut self) -> S {
        match self.slot.take().expect("a Behind always holds its state or a job") {
            Slot::Idle(state) => state,
            Slot::Busy(back) => {
                let back = back.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
                // A job only ends by sending; a closed channel means its step panicked.
                back.recv().expect("an offloaded stream step panicked")
            }
        }
    }
}

impl<S> Drop for Behind<S> {
    fn drop(&mut self) {
        STREAMS.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes seen, and the length of each step, in order.
    fn append(state: &mut (Vec<u8>, Vec<usize>), piece: &[u8]) {
        state.0.extend_from_slice(piece);
        state.1.push(piece.len());
    }

    /// Whatever mix of pieces runs away or here, the state sees them in order and every
    /// step runs once, in order.
    #[test]
    fn keeps_order_and_runs_every_step_once() {
        let mut b = Behind::new((Vec::new(), Vec::new()), append);
        let mut expected = Vec::new();
        let mut lens = Vec::new();
        for (i, len) in [1usize, 70_000, 20_000, 5, 16 * 1024, 100_000, 0, 3]
            .into_iter()
            .enumerate()
        {
            let piece: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
            expected.extend_from_slice(&piece);
            lens.push(len);
            b.feed(Bytes::from(piece));
        }
        let (state, outputs) = b.finish();
        assert_eq!(state, expected);
        assert_eq!(outputs, lens);
    }

    /// Jobs give their pool place back, so later requests can offload again.
    #[test]
    fn places_are_returned() {
        for _ in 0..50 {
            let mut b = Behind::new((Vec::new(), Vec::new()), append);
            b.feed(Bytes::from(vec![1u8; OFFLOAD_MIN]));
            b.finish();
        }
        // Other tests of this process may hold places for a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !claim_job() {
            assert!(
                std::time::Instant::now() < deadline,
                "pool places were not returned"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(JobPlace);
    }
}
