//! The in-memory key store.
//!
//! All master keys live in one fixed-size heap block allocated once at start-up, page-locked
//! with `mlock` (best effort) so it is never swapped, and wiped (`zeroize`) when a slot is
//! cleared or the vault is dropped. The block never moves or grows, so no stale copies are
//! left behind by reallocation.

use std::time::SystemTime;

use s3cp_format::keys::{KeyId, KeyRing, MasterKey, KEY_LEN};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// How many master keys can be loaded at once.
pub const MAX_KEYS: usize = 32;

/// Why a key could not be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    #[error("key id {0} is already loaded with different key material")]
    Conflict(KeyId),
    #[error("the key store is full ({MAX_KEYS} keys)")]
    Full,
}

/// Result of a successful insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    /// Identical material was already loaded under this id.
    pub already_loaded: bool,
    /// The key is the current key after the insert.
    pub is_current: bool,
}

struct Slots {
    keys: [Option<MasterKey>; MAX_KEYS],
}

/// The key store. Not `Clone`; shared behind a mutex.
pub struct Vault {
    slots: Box<Slots>,
    current: Option<KeyId>,
    loaded_at: Option<SystemTime>,
    lock: LockState,
}

/// Whether the key memory is page-locked.
#[derive(Debug)]
pub enum LockState {
    Locked(#[allow(dead_code)] crate::harden::MemoryLock),
    /// mlock failed (e.g. RLIMIT_MEMLOCK); the reason is kept for the status log.
    Unlocked(String),
}

impl Default for Vault {
    fn default() -> Self {
        Self::new()
    }
}

impl Vault {
    /// Allocates the key block and tries to lock it in RAM.
    pub fn new() -> Self {
        let slots = Box::new(Slots {
            keys: std::array::from_fn(|_| None),
        });
        let lock = match crate::harden::MemoryLock::of(&*slots) {
            Ok(lock) => LockState::Locked(lock),
            Err(e) => LockState::Unlocked(format!(
                "key memory ({} bytes): {e}",
                std::mem::size_of::<Slots>()
            )),
        };
        Self {
            slots,
            current: None,
            loaded_at: None,
            lock,
        }
    }

    /// `Ok(())` when key memory is locked, else the reason it is not.
    pub fn lock_status(&self) -> Result<(), &str> {
        match &self.lock {
            LockState::Locked(_) => Ok(()),
            LockState::Unlocked(why) => Err(why),
        }
    }

    /// Stores a key. A key id already present with identical bytes is accepted (idempotent
    /// re-delivery); with different bytes it is refused, so a typo can never silently replace
    /// the key existing objects were written with. The first key always becomes current.
    pub fn insert(&mut self, key: &MasterKey, make_current: bool) -> Result<Inserted, VaultError> {
        let id = key.id();
        let mut already_loaded = false;
        if let Some(existing) = self.slots.keys.iter().flatten().find(|k| k.id() == id) {
            if !bool::from(existing.expose().ct_eq(key.expose())) {
                return Err(VaultError::Conflict(id));
            }
            already_loaded = true;
        } else {
            let slot = self
                .slots
                .keys
                .iter_mut()
                .find(|s| s.is_none())
                .ok_or(VaultError::Full)?;
            let mut bytes = zeroize::Zeroizing::new([0u8; KEY_LEN]);
            bytes.copy_from_slice(key.expose());
            *slot = Some(MasterKey::new(id, *bytes));
        }
        if make_current || self.current.is_none() {
            self.current = Some(id);
        }
        self.loaded_at = Some(SystemTime::now());
        Ok(Inserted {
            already_loaded,
            is_current: self.current == Some(id),
        })
    }

    /// Loaded key ids, ascending.
    pub fn ids(&self) -> Vec<KeyId> {
        let mut ids: Vec<KeyId> = self.slots.keys.iter().flatten().map(|k| k.id()).collect();
        ids.sort_unstable();
        ids
    }

    pub fn current(&self) -> Option<KeyId> {
        self.current
    }

    /// When the key set last changed.
    pub fn loaded_at(&self) -> Option<SystemTime> {
        self.loaded_at
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_none()
    }

    /// Visits every key (for `/key/raw`), current first is not guaranteed; ids ascending.
    pub fn for_each_key(&self, mut f: impl FnMut(&MasterKey)) {
        let mut refs: Vec<&MasterKey> = self.slots.keys.iter().flatten().collect();
        refs.sort_unstable_by_key(|k| k.id());
        for k in refs {
            f(k);
        }
    }

    /// Builds the proxy's key ring (sub-keys derived from every loaded key).
    pub fn keyring(&self) -> Option<KeyRing> {
        let current = self.current?;
        // Sized up front: a growing Vec would leave unwiped copies of keys behind.
        let mut keys: Vec<MasterKey> = Vec::with_capacity(MAX_KEYS);
        keys.extend(self.slots.keys.iter().flatten().cloned());
        KeyRing::new(current, &keys)
    }

    /// Wipes every key.
    pub fn clear(&mut self) {
        for slot in self.slots.keys.iter_mut() {
            // Dropping a MasterKey zeroizes its bytes in place (ZeroizeOnDrop).
            *slot = None;
        }
        self.current = None;
        self.loaded_at = None;
    }
}

impl Drop for Vault {
    fn drop(&mut self) {
        self.clear();
        // Belt and braces: the Option discriminants and ids.
        self.current.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_current_and_conflicts() {
        let mut v = Vault::new();
        assert!(v.is_empty());
        let k1 = MasterKey::generate(1);
        let k2 = MasterKey::generate(2);
        // First key is current even without make_current.
        assert_eq!(
            v.insert(&k1, false).unwrap(),
            Inserted {
                already_loaded: false,
                is_current: true
            }
        );
        assert_eq!(
            v.insert(&k2, false).unwrap(),
            Inserted {
                already_loaded: false,
                is_current: false
            }
        );
        assert_eq!(v.current(), Some(1));
        assert_eq!(
            v.insert(&k2, true).unwrap(),
            Inserted {
                already_loaded: true,
                is_current: true
            }
        );
        assert_eq!(v.current(), Some(2));
        assert_eq!(v.ids(), vec![1, 2]);
        assert_eq!(
            v.insert(&MasterKey::generate(1), true),
            Err(VaultError::Conflict(1))
        );
        assert_eq!(v.current(), Some(2), "a refused insert changes nothing");
        let ring = v.keyring().unwrap();
        assert_eq!(ring.current_id(), 2);
        assert_eq!(ring.ids().collect::<Vec<_>>(), vec![1, 2]);
        v.clear();
        assert!(v.is_empty() && v.ids().is_empty() && v.keyring().is_none());
    }

    #[test]
    fn full() {
        let mut v = Vault::new();
        for i in 0..MAX_KEYS as u32 {
            v.insert(&MasterKey::generate(i), false).unwrap();
        }
        assert_eq!(
            v.insert(&MasterKey::generate(999), true),
            Err(VaultError::Full)
        );
    }
}
