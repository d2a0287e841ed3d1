//! The key ring currently loaded from keyd, shared by every request.
//!
//! A key id names one key for good: objects record the id they were written with. So a ring
//! that brings different key material under an id this process has already loaded is refused
//! and the loaded ring stays: taking it up would make the objects written with the loaded key
//! unreadable, and the objects written meanwhile unreadable once the right key comes back.
//! Keys are compared by their key check values (constant time), which this process remembers
//! for every id it ever loaded.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use s3cp_format::keys::{KeyId, KCV_LEN};
use s3cp_format::KeyRing;

/// Keeps a ring's key memory locked in RAM while it is loaded (the proxy passes
/// `keyd::harden::MemoryLock::of_keyring`); the error says why it could not.
pub type MemoryLocker = fn(&KeyRing) -> Result<Box<dyn std::any::Any + Send + Sync>, String>;

/// What [`KeyState::set`] did with the ring it was offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    /// Installed (the first ring, or one with other ids or another current key).
    Loaded,
    /// The same keys as the loaded ring: nothing changed.
    Unchanged,
    /// Different key material under ids already loaded: refused, the loaded ring stays.
    /// `first` is true when this refusal is new (to log it once, not at every poll).
    Refused { key_ids: Vec<KeyId>, first: bool },
}

/// A refused delivery, for the status API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub key_ids: Vec<KeyId>,
    pub since: SystemTime,
}

struct Loaded {
    ring: Arc<KeyRing>,
    at: SystemTime,
    /// Holds the ring's memory locked, or why it is not.
    lock: Result<Box<dyn std::any::Any + Send + Sync>, String>,
}

#[derive(Default)]
struct Inner {
    loaded: Option<Loaded>,
    /// The key check value of every key id ever loaded by this process.
    seen: BTreeMap<KeyId, [u8; KCV_LEN]>,
    refused: Option<Refusal>,
}

#[derive(Default)]
pub struct KeyState {
    inner: RwLock<Inner>,
    locker: Option<MemoryLocker>,
}

impl KeyState {
    /// A state whose rings are locked in RAM by `locker`.
    pub fn with_memory_lock(locker: MemoryLocker) -> Self {
        Self { inner: RwLock::default(), locker: Some(locker) }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self) -> Option<Arc<KeyRing>> {
        self.read().loaded.as_ref().map(|l| l.ring.clone())
    }

    pub fn loaded_at(&self) -> Option<SystemTime> {
        self.read().loaded.as_ref().map(|l| l.at)
    }

    /// `None` without a ring; else whether its key memory is locked in RAM, or why not.
    pub fn memory_locked(&self) -> Option<Result<(), String>> {
        self.read().loaded.as_ref().map(|l| l.lock.as_ref().map(|_| ()).map_err(Clone::clone))
    }

    /// The delivery being refused, if any.
    pub fn refused(&self) -> Option<Refusal> {
        self.read().refused.clone()
    }

    /// Forgets a refusal (keyd no longer offers the conflicting key, e.g. it restarted empty).
    pub fn clear_refusal(&self) {
        self.inner.write().unwrap_or_else(|p| p.into_inner()).refused = None;
    }

    /// Locks the loaded ring's memory again: memory locks are not inherited across `fork`, so
    /// a process that daemonized after loading its keys calls this once in the child.
    pub fn relock(&self) {
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if let (Some(l), Some(lock)) = (g.loaded.as_mut(), self.locker) {
            // Release first: the pages are then locked afresh in this process.
            l.lock = Err("relocking".into());
            l.lock = lock(&l.ring);
        }
    }

    /// Offers a ring fetched from keyd; see [`Offer`].
    pub fn set(&self, ring: KeyRing) -> Offer {
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let conflicts: Vec<KeyId> = ring
            .ids()
            .filter(|id| {
                let seen = g.seen.get(id);
                seen.is_some_and(|kcv| !ring.get(*id).is_some_and(|k| k.kcv_matches(kcv)))
            })
            .collect();
        if !conflicts.is_empty() {
            let first = g.refused.as_ref().is_none_or(|r| r.key_ids != conflicts);
            if first {
                g.refused = Some(Refusal { key_ids: conflicts.clone(), since: SystemTime::now() });
            }
            return Offer::Refused { key_ids: conflicts, first };
        }
        g.refused = None;
        // Every id already seen matched its key check value: same ids and current id means
        // the same keys.
        let unchanged = g.loaded.as_ref().is_some_and(|l| l.ring.current_id() == ring.current_id() && l.ring.ids().eq(ring.ids()));
        if unchanged {
            return Offer::Unchanged;
        }
        for id in ring.ids() {
            if let Some(k) = ring.get(id) {
                g.seen.insert(id, *k.kcv());
            }
        }
        let lock = match self.locker {
            Some(lock) => lock(&ring),
            None => Err("memory locking is not enabled".into()),
        };
        g.loaded = Some(Loaded { ring: Arc::new(ring), at: SystemTime::now(), lock });
        Offer::Loaded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3cp_format::keys::MasterKey;

    fn ring(current: KeyId, keys: &[&MasterKey]) -> KeyRing {
        let keys: Vec<MasterKey> = keys.iter().map(|k| (*k).clone()).collect();
        KeyRing::new(current, &keys).unwrap()
    }

    #[test]
    fn same_keys_again_change_nothing() {
        let s = KeyState::default();
        let k1 = MasterKey::new(1, [1; 32]);
        assert_eq!(s.set(ring(1, &[&k1])), Offer::Loaded);
        let loaded = s.get().unwrap();
        assert_eq!(s.set(ring(1, &[&k1])), Offer::Unchanged);
        assert!(Arc::ptr_eq(&loaded, &s.get().unwrap()), "the loaded ring stays in place");
    }

    #[test]
    fn a_new_key_or_current_id_is_taken_up() {
        let s = KeyState::default();
        let (k1, k2) = (MasterKey::new(1, [1; 32]), MasterKey::new(2, [2; 32]));
        assert_eq!(s.set(ring(1, &[&k1])), Offer::Loaded);
        assert_eq!(s.set(ring(1, &[&k1, &k2])), Offer::Loaded);
        assert_eq!(s.set(ring(2, &[&k1, &k2])), Offer::Loaded);
        assert_eq!(s.get().unwrap().current_id(), 2);
    }

    #[test]
    fn different_material_under_a_loaded_id_is_refused_and_the_old_key_stays() {
        let s = KeyState::default();
        let k1 = MasterKey::new(1, [1; 32]);
        let impostor = MasterKey::new(1, [0xee; 32]);
        assert_eq!(s.set(ring(1, &[&k1])), Offer::Loaded);
        let kcv = *s.get().unwrap().current().kcv();
        assert_eq!(s.set(ring(1, &[&impostor])), Offer::Refused { key_ids: vec![1], first: true });
        // Logged once: the next polls report the same refusal as not new.
        assert_eq!(s.set(ring(1, &[&impostor])), Offer::Refused { key_ids: vec![1], first: false });
        assert_eq!(s.get().unwrap().current().kcv(), &kcv, "the original key is kept");
        assert_eq!(s.refused().unwrap().key_ids, vec![1]);
        // The right key again: no refusal, nothing to reload.
        assert_eq!(s.set(ring(1, &[&k1])), Offer::Unchanged);
        assert!(s.refused().is_none());
    }

    #[test]
    fn a_key_id_is_remembered_after_its_ring_is_replaced() {
        // keyd restarted with only key 2, then got a wrong key 1: key 1 was loaded before.
        let s = KeyState::default();
        let (k1, k2) = (MasterKey::new(1, [1; 32]), MasterKey::new(2, [2; 32]));
        assert_eq!(s.set(ring(1, &[&k1])), Offer::Loaded);
        assert_eq!(s.set(ring(2, &[&k2])), Offer::Loaded);
        let wrong1 = MasterKey::new(1, [9; 32]);
        assert_eq!(s.set(ring(1, &[&wrong1, &k2])), Offer::Refused { key_ids: vec![1], first: true });
        assert_eq!(s.get().unwrap().current_id(), 2);
        s.clear_refusal();
        assert!(s.refused().is_none());
    }

    #[test]
    fn memory_lock_state_is_reported() {
        let s = KeyState::default();
        assert!(s.memory_locked().is_none());
        s.set(ring(1, &[&MasterKey::new(1, [1; 32])]));
        assert!(s.memory_locked().unwrap().is_err(), "no locker: not locked");
        let s = KeyState::with_memory_lock(|_| Ok(Box::new(())));
        s.set(ring(1, &[&MasterKey::new(1, [1; 32])]));
        assert_eq!(s.memory_locked(), Some(Ok(())));
    }
}
