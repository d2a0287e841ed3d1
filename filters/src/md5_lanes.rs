//! Content-MD5 of many concurrent uploads, hashed side by side in SIMD lanes.
//!
//! One MD5 stream cannot go faster than one block after another (~0.4–0.6 GB/s per core),
//! but independent streams can share an instruction: with AVX-512, sixteen uploads' blocks
//! are compressed at once (`md5-many`: ~3.5 GB/s for 16 lanes against ~0.4 GB/s for one,
//! on this project's 2-core test machine). PBS uploads its chunks in parallel, each with a
//! Content-MD5, so this is where a PBS upload's CPU goes.
//!
//! Each upload owns an [`Md5Stream`]. Its pieces (shared `Bytes`, never copied) queue on the
//! stream; the stream is listed once in a process-wide ready list; a batch job on the
//! crypto pool takes up to [`LANES`] listed streams, hashes the next piece of each in one
//! `update_many` call, hands the states back and lists again the streams that have more,
//! until the list is empty.
//!
//! A batch waits for company: lanes pay only when several streams are hashed together, and
//! pieces of concurrent uploads arrive one at a time (at 8 uploads in flight, a batch started
//! for every listed piece held one stream: perf showed 80 % of MD5 time in the one-lane
//! kernel). So a listed stream starts a job only when it has company ([`COMPANY`] streams
//! ready, or every live upload's stream when fewer are live), when its own queue reaches
//! [`START_AT`] pieces, or when its upload ends ([`Md5Stream::finish`]). A lone upload (the
//! only one whose body is arriving) is hashed on its own thread as its pieces come. The MD5 of a piece may lag its upload by up to
//! [`START_AT`] pieces (held as shared `Bytes`), never more: before the digest is read,
//! `finish` hashes what is left. A stream keeps at most [`MAX_QUEUED`] pieces queued: its
//! upload waits for the hasher rather than piling up memory.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use md5_many::{Md5Many, Md5State};

use crate::offload;

/// Streams hashed by one `update_many` call (AVX-512 has 16 lanes of 32 bits).
pub const LANES: usize = 16;

/// Pieces a stream may have queued before its feeder waits.
pub const MAX_QUEUED: usize = 4;

/// Queued pieces at which a stream starts a batch without waiting for company.
pub const START_AT: usize = 2;

/// Ready streams that start a batch (when at least this many uploads are live).
pub const COMPANY: usize = 4;

/// Live [`Md5Stream`]s (uploads with a Content-MD5 in progress).
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Uploads whose MD5 is being hashed here now.
pub fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// One upload's MD5, hashed in lanes beside the other uploads'.
pub struct Md5Stream {
    shared: Arc<Shared>,
}

struct Shared {
    lane: Mutex<Lane>,
    /// Signalled when a batch hands this stream's state back.
    settled: Condvar,
    /// It may not wait for company: [`START_AT`] pieces queued, or its upload is ending.
    urgent: AtomicBool,
}

struct Lane {
    /// `None` while a batch job is hashing it.
    md5: Option<Md5State>,
    queued: VecDeque<Bytes>,
    /// In the ready list or in a batch: listed at most once, so its pieces keep their order.
    listed: bool,
    /// `finish` waits for it.
    finishing: bool,
}

struct Ready {
    streams: VecDeque<Arc<Shared>>,
    jobs: usize,
}

fn ready() -> &'static Mutex<Ready> {
    static READY: Mutex<Ready> = Mutex::new(Ready { streams: VecDeque::new(), jobs: 0 });
    &READY
}

fn engine() -> Md5Many {
    static ENGINE: OnceLock<Md5Many> = OnceLock::new();
    *ENGINE.get_or_init(Md5Many::new)
}

/// A poisoned lock only means another thread panicked while holding plain data.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for Md5Stream {
    fn default() -> Self {
        Self::new()
    }
}

impl Md5Stream {
    pub fn new() -> Self {
        LIVE.fetch_add(1, Ordering::Relaxed);
        Self {
            shared: Arc::new(Shared {
                lane: Mutex::new(Lane { md5: Some(Md5State::new()), queued: VecDeque::new(), listed: false, finishing: false }),
                settled: Condvar::new(),
                urgent: AtomicBool::new(false),
            }),
        }
    }

    /// Appends `piece`. With nothing queued, a small piece, or any piece of the only upload
    /// whose body is arriving, is hashed here: a hand-off costs more than a small piece, and a
    /// lone stream would fill one lane of a batch, paying the hand-off and two wake-ups for
    /// nothing (`cargo bench -p filters --bench digests`: 2.09 against 1.58 CPU-s/GiB for one
    /// upload). Others queue for the lanes.
    pub fn feed(&mut self, piece: Bytes) {
        if piece.is_empty() {
            return;
        }
        let mut lane = lock(&self.shared.lane);
        if !lane.listed && (piece.len() < offload::OFFLOAD_MIN || LIVE.load(Ordering::Relaxed) == 1) {
            lane.md5.as_mut().expect("an unlisted stream holds its state").update(&piece);
            return;
        }
        while lane.queued.len() >= MAX_QUEUED {
            lane = self.shared.settled.wait(lane).unwrap_or_else(|p| p.into_inner());
        }
        lane.queued.push_back(piece);
        // Set before the ready list is looked at (under its lock), so that a job deciding
        // whether to go on sees it.
        if lane.queued.len() >= START_AT {
            self.shared.urgent.store(true, Ordering::Release);
        }
        if !lane.listed {
            lane.listed = true;
            drop(lane);
            list(self.shared.clone());
        } else if self.shared.urgent.load(Ordering::Relaxed) {
            drop(lane);
            start_job();
        }
    }

    /// Waits for the queued pieces and returns the digest.
    pub fn finish(self) -> [u8; 16] {
        let mut lane = lock(&self.shared.lane);
        if lane.listed {
            // Listed and maybe waiting for company, which may never come: hash it now.
            lane.finishing = true;
            self.shared.urgent.store(true, Ordering::Release);
            drop(lane);
            start_job();
            lane = lock(&self.shared.lane);
        }
        while lane.listed {
            lane = self.shared.settled.wait(lane).unwrap_or_else(|p| p.into_inner());
        }
        lane.md5.as_ref().expect("a settled stream holds its state").finalize()
    }
}

impl Drop for Md5Stream {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
        // An upload that ended early (`finish` consumes the stream, so this is a failed or
        // aborted one) leaves nothing queued waiting for company: its pieces are freed soon.
        let mut lane = lock(&self.shared.lane);
        if lane.listed && !lane.finishing {
            lane.finishing = true;
            self.shared.urgent.store(true, Ordering::Release);
            drop(lane);
            start_job();
        }
    }
}

/// Puts a stream on the ready list; starts a batch if the list is worth one.
fn list(stream: Arc<Shared>) {
    let mut r = lock(ready());
    r.streams.push_back(stream);
    start_locked(r);
}

/// Starts a batch job if the ready list is worth one and no job is running (more jobs, up
/// to the pool's threads, once a job's lanes are full).
fn start_job() {
    start_locked(lock(ready()));
}

fn start_locked(mut r: MutexGuard<'_, Ready>) {
    let threads = offload::pool().current_num_threads();
    let wanted = if r.jobs == 0 { worth_a_batch(&r) } else { r.streams.len() > LANES * r.jobs };
    if r.jobs < threads && wanted {
        r.jobs += 1;
        drop(r);
        offload::pool().spawn(run_batches);
    }
}

/// Whether the ready streams should be hashed now: they have company (every live upload's
/// stream when fewer than [`COMPANY`] are live, so a lone upload never waits), or one of them
/// may not wait.
fn worth_a_batch(r: &Ready) -> bool {
    let company = COMPANY.min(LIVE.load(Ordering::Relaxed)).max(1);
    r.streams.len() >= company || r.streams.iter().any(|s| s.urgent.load(Ordering::Acquire))
}

/// Hashes ready streams, one piece each per `update_many` call, until none is ready.
fn run_batches() {
    let engine = engine();
    let mut batch: Vec<Arc<Shared>> = Vec::with_capacity(LANES);
    let mut states: Vec<Md5State> = Vec::with_capacity(LANES);
    let mut pieces: Vec<Bytes> = Vec::with_capacity(LANES);
    loop {
        {
            let mut r = lock(ready());
            // Decided under the lock that `list` and `start_job` take: a stream made urgent
            // after this look starts a job of its own.
            if r.streams.is_empty() || !worth_a_batch(&r) {
                r.jobs -= 1;
                return;
            }
            let n = r.streams.len().min(LANES);
            batch.extend(r.streams.drain(..n));
        }
        for s in &batch {
            let mut lane = lock(&s.lane);
            states.push(lane.md5.take().expect("a listed stream is in one batch at a time"));
            pieces.push(lane.queued.pop_front().expect("a listed stream has a piece queued"));
            if lane.queued.len() < START_AT && !lane.finishing {
                s.urgent.store(false, Ordering::Release);
            }
            // Its feeder may queue the next piece now.
            s.settled.notify_all();
        }
        let slices: Vec<&[u8]> = pieces.iter().map(|p| p.as_ref()).collect();
        if states.len() == 1 {
            states[0].update(slices[0]);
        } else {
            engine.update_many(&mut states, &slices);
        }
        drop(slices);
        pieces.clear();
        for (s, md5) in batch.drain(..).zip(states.drain(..)) {
            let mut lane = lock(&s.lane);
            lane.md5 = Some(md5);
            let more = !lane.queued.is_empty();
            lane.listed = more;
            drop(lane);
            s.settled.notify_all();
            if more {
                lock(ready()).streams.push_back(s);
            }
        }
    }
}

/// MD5 of a body held whole.
pub fn digest(body: &[u8]) -> [u8; 16] {
    md5_many::md5(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::Digest as _;

    fn reference(body: &[u8]) -> [u8; 16] {
        md5::Md5::digest(body).into()
    }

    fn body(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 11) as u8).collect()
    }

    /// Pieces of every size class (in place, queued, odd lengths, empty) give the digest of
    /// the whole body.
    #[test]
    fn one_stream_matches_the_reference() {
        let data = body(1_000_003, 7);
        for piece in [1usize, 63, 64, 65, 1000, offload::OFFLOAD_MIN - 1, offload::OFFLOAD_MIN, 65_536, 1 << 20] {
            let mut s = Md5Stream::new();
            for p in data.chunks(piece) {
                s.feed(Bytes::copy_from_slice(p));
            }
            s.feed(Bytes::new());
            assert_eq!(s.finish(), reference(&data), "piece {piece}");
        }
        assert_eq!(Md5Stream::new().finish(), reference(b""));
        assert_eq!(digest(&data), reference(&data));
    }

    /// With other uploads live but idle, a stream's one queued piece waits for company; its
    /// `finish` starts the batch itself and never hangs.
    #[test]
    fn a_stream_waiting_for_company_is_hashed_at_finish() {
        let idle: Vec<Md5Stream> = (0..COMPANY + 2).map(|_| Md5Stream::new()).collect();
        for len in [offload::OFFLOAD_MIN, 65_536, 65_536 + 100] {
            let data = body(len, 11);
            let mut s = Md5Stream::new();
            s.feed(Bytes::copy_from_slice(&data));
            assert_eq!(s.finish(), reference(&data), "{len}");
        }
        drop(idle);
    }

    /// A lone stream fed faster than it is hashed (pieces queue) keeps the order of its
    /// pieces: two pieces swapped give another digest, the same pieces in order the reference.
    #[test]
    fn a_lone_stream_keeps_the_order_of_its_queued_pieces() {
        let data = body(64 * 65_536 + 17, 3);
        let pieces: Vec<&[u8]> = data.chunks(65_536).collect();
        for order in [vec![0, 1], vec![1, 0]] {
            let mut s = Md5Stream::new();
            for j in order.iter().copied().chain(2..pieces.len()) {
                s.feed(Bytes::copy_from_slice(pieces[j]));
            }
            let got = s.finish();
            if order == [0, 1] {
                assert_eq!(got, reference(&data));
            } else {
                assert_ne!(got, reference(&data));
            }
        }
    }

    /// Many streams fed at once from many threads, with different piece sizes and lengths,
    /// share lanes and each still gets its own digest; a swapped piece is noticed.
    #[test]
    fn concurrent_streams_share_lanes_and_keep_their_bytes() {
        let handles: Vec<_> = (0..40u32)
            .map(|i| {
                std::thread::spawn(move || {
                    let data = body(300_000 + i as usize * 4099, i);
                    let piece = [16_384usize, 65_536, 20_000, 131_072][i as usize % 4];
                    let mut s = Md5Stream::new();
                    for p in data.chunks(piece) {
                        s.feed(Bytes::copy_from_slice(p));
                    }
                    assert_eq!(s.finish(), reference(&data), "stream {i}");
                    let mut s = Md5Stream::new();
                    let pieces: Vec<&[u8]> = data.chunks(piece).collect();
                    for j in [1, 0].into_iter().chain(2..pieces.len()) {
                        s.feed(Bytes::copy_from_slice(pieces[j]));
                    }
                    assert_ne!(s.finish(), reference(&data), "stream {i} swapped");
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }
}
