//! The key ring currently loaded from keyd, shared by every request.

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use s3cp_format::KeyRing;

#[derive(Default)]
pub struct KeyState {
    inner: RwLock<Option<(Arc<KeyRing>, SystemTime)>>,
}

impl KeyState {
    pub fn get(&self) -> Option<Arc<KeyRing>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(k, _)| k.clone())
    }

    pub fn loaded_at(&self) -> Option<SystemTime> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(_, t)| *t)
    }

    /// Installs a ring; returns true when it differs from the one loaded (by key ids and
    /// current id), so callers can log changes without logging every poll.
    pub fn set(&self, ring: KeyRing) -> bool {
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let changed = g.as_ref().is_none_or(|(old, _)| {
            old.current_id() != ring.current_id() || !old.ids().eq(ring.ids())
        });
        if changed {
            *g = Some((Arc::new(ring), SystemTime::now()));
        } else if let Some((old, _)) = g.as_mut() {
            *old = Arc::new(ring);
        }
        changed
    }
}
