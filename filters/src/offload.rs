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
//! thread is idle, and only while the **machine** has a core to spare ([`IDLE_NEEDED`]: idle
//! in `/proc/stat`, or busy with the pool's own jobs): the cores may be busy with other
//! processes the proxy cannot see otherwise, a backend on the same host above all. Measured
//! with Garage on the same two cores (BENCHMARKS.md, "Ninth session"): offloading there cost
//! 8–14 % more proxy CPU per GiB for no throughput. (`/proc/stat` counts the host's cores: in
//! a container held to a CPU quota the gate may stay open, as it always was before.)

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Pieces smaller than this run in place: a job costs a few microseconds.
pub const OFFLOAD_MIN: usize = 16 * 1024;

/// Jobs started and not yet finished, over all requests.
static JOBS: AtomicUsize = AtomicUsize::new(0);

/// Live [`Behind`] streams, over all requests.
static STREAMS: AtomicUsize = AtomicUsize::new(0);

/// A job for the pool.
type Job = Box<dyn FnOnce() + Send>;

/// CPU the offloaded work could use over the last [`SAMPLE_EVERY`], in hundredths of a
/// core: the machine's idle CPU plus what the pool itself was busy with (without the
/// latter, offloading would switch itself off by using the idle core it found);
/// `u32::MAX` (idle) until the first sample and where `/proc/stat` cannot be read.
static IDLE_CENTICORES: AtomicU32 = AtomicU32::new(u32::MAX);

/// Time the pool's threads spent in jobs, in nanoseconds, over the process's life (wall
/// time: a job preempted on a busy machine counts longer than it ran, which only errs towards
/// offloading, as before the gate).
static POOL_BUSY_NS: AtomicU64 = AtomicU64::new(0);

/// How often the machine's idle CPU is sampled (20 ticks of `/proc/stat` per core).
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// Idle CPU the machine needs for a piece to be offloaded, in hundredths of a core.
const IDLE_NEEDED: u32 = 75;

/// The aggregate `cpu` line of `/proc/stat`: (idle ticks, all ticks), and the number of
/// `cpuN` lines (cores).
fn cpu_ticks(stat: &str) -> Option<(u64, u64, u32)> {
    let mut lines = stat.lines();
    let fields: Vec<u64> = lines.next()?.strip_prefix("cpu ")?.split_whitespace().map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is
    // already counted in user and nice.
    let idle = fields.get(3)? + fields.get(4).unwrap_or(&0);
    let all = fields.iter().take(8).sum();
    let cores = lines.filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit)).count() as u32;
    Some((idle, all, cores.max(1)))
}

/// Idle cores between two samples of [`cpu_ticks`], in hundredths of a core.
fn idle_centicores(before: (u64, u64, u32), after: (u64, u64, u32)) -> u32 {
    let all = after.1.saturating_sub(before.1);
    if all == 0 {
        return u32::MAX; // no tick elapsed: nothing known
    }
    let idle = after.0.saturating_sub(before.0).min(all);
    (idle * 100 * u64::from(after.2) / all) as u32
}

/// Samples the machine's idle CPU (and the pool's own) for [`machine_has_a_core_to_spare`],
/// forever.
fn sample_idle() {
    let read = || std::fs::read_to_string("/proc/stat").ok().as_deref().and_then(cpu_ticks);
    let Some(mut before) = read() else { return };
    let (mut at, mut busy) = (Instant::now(), POOL_BUSY_NS.load(Ordering::Relaxed));
    loop {
        std::thread::sleep(SAMPLE_EVERY);
        let Some(now) = read() else { return };
        let (now_at, now_busy) = (Instant::now(), POOL_BUSY_NS.load(Ordering::Relaxed));
        let pool = (now_busy.saturating_sub(busy) as u128 * 100 / now_at.duration_since(at).as_nanos().max(1)) as u32;
        // At most the machine: a job's wall time may span more than this sample.
        let spare = idle_centicores(before, now).saturating_add(pool).min(100 * now.2);
        IDLE_CENTICORES.store(spare, Ordering::Relaxed);
        (before, at, busy) = (now, now_at, now_busy);
    }
}

fn machine_has_a_core_to_spare() -> bool {
    IDLE_CENTICORES.load(Ordering::Relaxed) >= IDLE_NEEDED
}

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
            let started = Instant::now();
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                log::error!("a crypto pool job panicked; aborting");
                std::process::abort();
            }
            POOL_BUSY_NS.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
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
        // Without it the gate stays open, as before it existed.
        let _ = std::thread::Builder::new().name("cpu-idle".into()).spawn(sample_idle);
        pool
    })
}

/// Takes a place on the pool if the machine has a core to spare, few streams are live and a
/// pool thread is idle.
fn claim_job() -> bool {
    let threads = pool().current_num_threads();
    machine_has_a_core_to_spare() && STREAMS.load(Ordering::Relaxed) <= 2 * threads && claim_place(threads)
}

fn claim_place(threads: usize) -> bool {
    JOBS.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < threads).then_some(n + 1)).is_ok()
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
        // Other tests of this process may hold places for a moment. (The place itself, not
        // `claim_job`: whether the test machine has a core to spare is not the question.)
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !claim_place(pool().current_num_threads()) {
            assert!(
                std::time::Instant::now() < deadline,
                "pool places were not returned"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(JobPlace);
    }

    /// `/proc/stat` as Linux writes it: the aggregate line first, one line per core after.
    const STAT: &str = "cpu  4705 356 584 3699 23 23 0 0 0 0\n\
        cpu0 1393 280 283 1820 13 11 0 0 0 0\n\
        cpu1 3312 76 301 1879 10 12 0 0 0 0\n\
        intr 1462898 0 9 0 0\nctxt 4207467\n";

    #[test]
    fn reads_idle_and_all_ticks_and_cores() {
        assert_eq!(cpu_ticks(STAT), Some((3699 + 23, 4705 + 356 + 584 + 3699 + 23 + 23, 2)));
        assert_eq!(cpu_ticks("intr 1 2\n"), None);
        assert_eq!(cpu_ticks("cpu  1 x 3 4\n"), None);
        assert_eq!(cpu_ticks(""), None);
    }

    #[test]
    fn idle_cores_between_samples() {
        // Two cores, 40 ticks elapsed over both: 10 idle = half a core.
        assert_eq!(idle_centicores((100, 1000, 2), (110, 1040, 2)), 50);
        assert_eq!(idle_centicores((100, 1000, 2), (140, 1040, 2)), 200);
        assert_eq!(idle_centicores((100, 1000, 2), (100, 1040, 2)), 0);
        // No tick elapsed: unknown, the gate stays open.
        assert_eq!(idle_centicores((100, 1000, 2), (100, 1000, 2)), u32::MAX);
        // Counters never go back, but a bad read must not underflow.
        assert_eq!(idle_centicores((100, 1000, 2), (90, 1040, 2)), 0);
        assert!(idle_centicores((100, 1000, 2), (130, 1040, 2)) >= IDLE_NEEDED);
        assert!(idle_centicores((100, 1000, 2), (110, 1040, 2)) < IDLE_NEEDED);
    }

    /// The sampler runs in this process as in the proxy's, from the real `/proc/stat`.
    #[test]
    fn the_machine_is_sampled() {
        pool();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while IDLE_CENTICORES.load(Ordering::Relaxed) == u32::MAX {
            assert!(std::time::Instant::now() < deadline, "no sample of /proc/stat");
            std::thread::sleep(SAMPLE_EVERY);
        }
        let cores = cpu_ticks(&std::fs::read_to_string("/proc/stat").unwrap()).unwrap().2;
        assert!(IDLE_CENTICORES.load(Ordering::Relaxed) <= 100 * cores, "more than the machine's cores");
    }
}
