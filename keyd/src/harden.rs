//! Process hardening for processes that hold master keys (memkey-server, and the proxy may
//! call it too): no core dumps, not ptrace-attachable by same-uid processes.
//!
//! Everything here is best effort: it returns what worked and what did not, and the caller
//! logs the failures as warnings.

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
