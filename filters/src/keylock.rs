//! Per-object write locks within one proxy process (`conditional_writes: enforce`).
//!
//! A conditional write is a check (HEAD) and a write: two backend requests. Two writers
//! for the same key that both check before either writes both pass. Holding a lock per
//! object name from the check until the backend has answered the write makes the pair
//! atomic among the writers of this process; writers of other keys never wait.
//!
//! Memory stays bounded: an entry lives only while someone holds or waits for its lock.
//! Each entry counts its users (holder and waiters) under the map's mutex; the last one to
//! leave removes it. The count is kept by [`Ticket`], which is dropped on every path: a
//! guard released, a request failing, or a waiting request whose client went away (its
//! future is dropped mid-`await`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// One key's lock and the number of requests holding or waiting for it.
struct Slot {
    lock: Arc<AsyncMutex<()>>,
    users: usize,
}

/// The locks of one process, by object (`bucket/key`).
#[derive(Default)]
pub struct KeyLocks {
    slots: Mutex<HashMap<String, Slot>>,
}

impl KeyLocks {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        // Nothing can panic while the map is held; a poisoned map is still consistent.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until this request is the only one writing `name`, and returns the guard that
    /// says so. Dropping the guard (or the future, while it waits) gives the lock up.
    pub async fn lock(self: &Arc<Self>, name: String) -> KeyGuard {
        let lock = {
            let mut slots = self.slots();
            let slot = slots.entry(name.clone()).or_insert_with(|| Slot { lock: Arc::new(AsyncMutex::new(())), users: 0 });
            slot.users += 1;
            slot.lock.clone()
        };
        // Counted from here on: if this future is dropped while it waits, the ticket
        // takes its user off the count.
        let ticket = Ticket { locks: self.clone(), name };
        let held = lock.lock_owned().await;
        KeyGuard { held: Some(held), ticket }
    }

    /// Number of objects with a holder or waiters (for tests and metrics).
    pub fn len(&self) -> usize {
        self.slots().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One request's place in a slot's user count.
struct Ticket {
    locks: Arc<KeyLocks>,
    name: String,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut slots = self.locks.slots();
        if let Some(slot) = slots.get_mut(&self.name) {
            slot.users -= 1;
            if slot.users == 0 {
                slots.remove(&self.name);
            }
        }
    }
}

/// Proof that this request is the only writer of its object in this process.
pub struct KeyGuard {
    // Released before the ticket leaves the count (see Drop), so the slot is never removed
    // while its lock is held.
    held: Option<OwnedMutexGuard<()>>,
    ticket: Ticket,
}

impl KeyGuard {
    /// The object this guard locks (`bucket/key`).
    pub fn name(&self) -> &str {
        &self.ticket.name
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        // The next waiter may run from here; the ticket (a field) is dropped after this.
        drop(self.held.take());
    }
}

impl std::fmt::Debug for KeyGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyGuard({})", self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
    }

    #[test]
    fn a_dropped_guard_releases_the_lock_and_its_entry() {
        rt().block_on(async {
            let locks = KeyLocks::new();
            let g = locks.lock("b/k".into()).await;
            assert_eq!(g.name(), "b/k");
            assert_eq!(locks.len(), 1);
            drop(g);
            assert!(locks.is_empty());
            // Free again at once.
            let g = tokio::time::timeout(Duration::from_secs(1), locks.lock("b/k".into())).await.expect("lock was released");
            drop(g);
            assert!(locks.is_empty());
        });
    }

    #[test]
    fn other_keys_do_not_wait() {
        rt().block_on(async {
            let locks = KeyLocks::new();
            let _a = locks.lock("b/a".into()).await;
            let b = tokio::time::timeout(Duration::from_millis(200), locks.lock("b/b".into())).await;
            assert!(b.is_ok(), "a different key must not wait");
            assert_eq!(locks.len(), 2);
        });
    }

    #[test]
    fn one_holder_at_a_time_and_every_entry_removed_after() {
        rt().block_on(async {
            let locks = KeyLocks::new();
            let inside = Arc::new(AtomicUsize::new(0));
            let max_inside = Arc::new(AtomicUsize::new(0));
            let mut tasks = Vec::new();
            for i in 0..50 {
                let (locks, inside, max_inside) = (locks.clone(), inside.clone(), max_inside.clone());
                tasks.push(tokio::spawn(async move {
                    let _g = locks.lock(format!("b/k{}", i % 3)).await;
                    let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    max_inside.fetch_max(n, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            // Three keys: at most three holders at once, never two for one key.
            assert!(max_inside.load(Ordering::SeqCst) <= 3);
            assert!(locks.is_empty(), "entries left behind: {}", locks.len());
        });
    }

    #[test]
    fn same_key_is_serialised() {
        rt().block_on(async {
            let locks = KeyLocks::new();
            let inside = Arc::new(AtomicUsize::new(0));
            let mut tasks = Vec::new();
            for _ in 0..20 {
                let (locks, inside) = (locks.clone(), inside.clone());
                tasks.push(tokio::spawn(async move {
                    let _g = locks.lock("b/same".into()).await;
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders of one key");
                    tokio::task::yield_now().await;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            assert!(locks.is_empty());
        });
    }

    #[test]
    fn a_waiter_that_gives_up_leaves_nothing_behind() {
        rt().block_on(async {
            let locks = KeyLocks::new();
            let held = locks.lock("b/k".into()).await;
            // A client that disconnects while waiting: its future is dropped mid-await.
            let gave_up = tokio::time::timeout(Duration::from_millis(50), locks.lock("b/k".into())).await;
            assert!(gave_up.is_err());
            assert_eq!(locks.len(), 1);
            // And one that is aborted as a task.
            let l2 = locks.clone();
            let task = tokio::spawn(async move { l2.lock("b/k".into()).await });
            tokio::time::sleep(Duration::from_millis(20)).await;
            task.abort();
            assert!(task.await.is_err());
            drop(held);
            assert!(locks.is_empty(), "a cancelled waiter kept the entry");
        });
    }

    #[test]
    fn a_waiter_gets_the_lock_when_the_holder_fails() {
        rt().block_on(async {
            let locks = KeyLocks::new();
            let l2 = locks.clone();
            // The holder's task panics (a failing request): unwinding drops its guard.
            let holder = tokio::spawn(async move {
                let _g = l2.lock("b/k".into()).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                panic!("request failed");
            });
            tokio::time::sleep(Duration::from_millis(5)).await;
            let g = tokio::time::timeout(Duration::from_secs(2), locks.lock("b/k".into())).await.expect("lock released by the failed holder");
            assert!(holder.await.is_err());
            drop(g);
            assert!(locks.is_empty());
        });
    }
}
