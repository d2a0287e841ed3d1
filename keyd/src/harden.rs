//! Process hardening for the processes that hold master keys or keys derived from them
//! (memkey-server and s3-crypt-proxy): no core dumps, not ptrace-attachable by same-uid
//! processes, key memory locked in RAM, and private runtime directories.
//!
//! Everything here is best effort where the operating system may refuse (rlimits, mlock): it
//! returns what worked and what did not, and the caller logs the failures as warnings.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use s3cp_format::keys::KeyRing;

/// Outcome of [`disable_core_dumps`].
#[derive(Debug, Clone, Default)]
pub struct HardenReport {
    /// Steps that succeeded, for the start-up log.
    pub applied: Vec<&'static str>,
    /// Steps that failed, with the reason.
    pub failed: Vec<String>,
}

/// Sets RLIMIT_CORE to 0 and (Linux) PR_SET_DUMPABLE to 0, which also keeps other processes of
/// the same user from reading this process's memory through ptrace or /proc/PID/mem.
pub fn disable_core_dumps() -> HardenReport {
    let mut r = HardenReport::default();
    #[cfg(unix)]
    {
        use rustix::process::{setrlimit, Resource, Rlimit};
        match setrlimit(
            Resource::Core,
            Rlimit {
                current: Some(0),
                maximum: Some(0),
            },
        ) {
            Ok(()) => r.applied.push("RLIMIT_CORE=0"),
            Err(e) => r.failed.push(format!("setrlimit(RLIMIT_CORE, 0): {e}")),
        }
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use rustix::process::{set_dumpable_behavior, DumpableBehavior};
        match set_dumpable_behavior(DumpableBehavior::NotDumpable) {
            Ok(()) => r.applied.push("PR_SET_DUMPABLE=0"),
            Err(e) => r.failed.push(format!("prctl(PR_SET_DUMPABLE, 0): {e}")),
        }
    }
    r
}

/// The soft RLIMIT_MEMLOCK in bytes (`None` = unlimited), for diagnostics.
pub fn memlock_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        rustix::process::getrlimit(rustix::process::Resource::Memlock).current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Pages locked by [`MemoryLock`]s, with how many locks hold each. The kernel does not count
/// `mlock` calls (one `munlock` unlocks a page whatever locked it), and small key allocations
/// share pages, so a page is unlocked only when the last lock holding it is dropped.
static LOCKED_PAGES: Mutex<BTreeMap<usize, usize>> = Mutex::new(BTreeMap::new());

/// Keeps memory holding key material locked in RAM (never swapped) while alive.
#[derive(Debug)]
pub struct MemoryLock {
    pages: Vec<usize>,
}

impl MemoryLock {
    /// Locks the pages under `len` bytes at `addr`.
    fn pages_of(&mut self, addr: usize, len: usize) -> Result<(), String> {
        if len == 0 {
            return Ok(());
        }
        let page = region::page::size();
        let first = addr & !(page - 1);
        let last = (addr + len - 1) & !(page - 1);
        let mut held = LOCKED_PAGES.lock().unwrap_or_else(|p| p.into_inner());
        for p in (first..=last).step_by(page) {
            let count = held.entry(p).or_insert(0);
            if *count == 0 {
                match region::lock(p as *const u8, page) {
                    // Unlocked by hand in `Drop`, when the last holder of the page goes.
                    Ok(guard) => std::mem::forget(guard),
                    Err(e) => {
                        held.remove(&p);
                        return Err(format!(
                            "mlock failed: {e} (RLIMIT_MEMLOCK is {}; raise it, e.g. LimitMEMLOCK= in the systemd unit)",
                            memlock_limit().map_or("unlimited".into(), |b| format!("{b} bytes"))
                        ));
                    }
                }
            }
            *count += 1;
            self.pages.push(p);
        }
        Ok(())
    }

    /// Locks the memory of `value` (its own bytes, not what it points to).
    pub fn of<T>(value: &T) -> Result<Self, String> {
        let mut lock = Self { pages: Vec::new() };
        lock.pages_of(value as *const T as usize, std::mem::size_of::<T>())?;
        Ok(lock)
    }

    /// Locks every derived key of a ring (KEK, MEK and key check value of each master key).
    pub fn of_keyring(ring: &KeyRing) -> Result<Self, String> {
        let mut lock = Self { pages: Vec::new() };
        for id in ring.ids() {
            if let Some(keys) = ring.get(id) {
                lock.pages_of(std::sync::Arc::as_ptr(keys) as usize, std::mem::size_of_val(&**keys))?;
            }
        }
        Ok(lock)
    }
}

impl Drop for MemoryLock {
    fn drop(&mut self) {
        let page = region::page::size();
        let mut held = LOCKED_PAGES.lock().unwrap_or_else(|p| p.into_inner());
        for p in self.pages.drain(..) {
            if let Some(count) = held.get_mut(&p) {
                *count -= 1;
                if *count == 0 {
                    held.remove(&p);
                    let _ = region::unlock(p as *const u8, page);
                }
            }
        }
    }
}

/// Checks that `dir` is private to this process's user: a directory, owned by the effective
/// user (or root), writable by nobody else. With `create`, a missing directory is created
/// with mode 0700 first. A socket or PID file in a directory others can write to can be
/// replaced by them (a local user binding the upgrade socket first receives the proxy's
/// listening sockets). Without `create` (a configuration check) run by root, the owner is
/// not checked: root checks on behalf of the service user, whose directory it is.
pub fn private_dir(dir: &Path, create: bool) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
            std::fs::metadata(dir).map_err(|e| format!("cannot inspect {}: {e}", dir.display()))?
        }
        // Not there yet (checking a configuration before the first start): it is created then.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot inspect {}: {e}", dir.display())),
    };
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "directory {} is group- or world-writable (mode {mode:04o}); use a private one (mode 0700 or 0750)",
            dir.display()
        ));
    }
    let me = rustix::process::geteuid().as_raw();
    let checking_for_another_user = !create && me == 0;
    if meta.uid() != me && meta.uid() != 0 && !checking_for_another_user {
        return Err(format!(
            "directory {} belongs to uid {}, not to this process's user (uid {me})",
            dir.display(),
            meta.uid()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3cp_format::keys::MasterKey;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn shared_pages_stay_locked_until_the_last_holder_goes() {
        // Two values on one page that nothing else uses (a page inside a larger buffer):
        // dropping one lock must not unlock the other's page.
        let page = region::page::size();
        let buf = vec![7u8; 3 * page];
        let start = (buf.as_ptr() as usize + page - 1) & !(page - 1);
        let off = start - buf.as_ptr() as usize;
        let x: &[u8; 32] = buf[off..off + 32].try_into().unwrap();
        let y: &[u8; 32] = buf[off + 64..off + 96].try_into().unwrap();
        let (Ok(a), Ok(b)) = (MemoryLock::of(x), MemoryLock::of(y)) else {
            eprintln!("mlock not permitted here; skipping");
            return;
        };
        let count = || LOCKED_PAGES.lock().unwrap().get(&start).copied();
        assert_eq!(count(), Some(2));
        drop(a);
        assert_eq!(count(), Some(1));
        drop(b);
        assert_eq!(count(), None);
    }

    #[test]
    fn keyring_lock_covers_every_key() {
        let ring = KeyRing::new(2, &[MasterKey::generate(1), MasterKey::generate(2)]).unwrap();
        if let Ok(lock) = MemoryLock::of_keyring(&ring) {
            assert!(!lock.pages.is_empty());
            let held = LOCKED_PAGES.lock().unwrap();
            for id in ring.ids() {
                let addr = std::sync::Arc::as_ptr(ring.get(id).unwrap()) as usize;
                assert!(held.contains_key(&(addr & !(region::page::size() - 1))));
            }
        }
    }

    #[test]
    fn private_dir_is_created_0700_and_loose_ones_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run/s3-crypt-proxy");
        assert!(private_dir(&run, false).is_ok(), "missing and not created: checked later");
        assert!(!run.exists());
        private_dir(&run, true).unwrap();
        assert_eq!(std::fs::metadata(&run).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o750)).unwrap();
        private_dir(&run, true).unwrap();
        for loose in [0o777, 0o1777, 0o770] {
            std::fs::set_permissions(&run, std::fs::Permissions::from_mode(loose)).unwrap();
            let e = private_dir(&run, true).unwrap_err();
            assert!(e.contains("group- or world-writable"), "{e}");
        }
        let file = tmp.path().join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(private_dir(&file, true).unwrap_err().contains("not a directory"));
    }
}
