//! glibc malloc settings for a proxy whose buffers come and go with every body piece.
//!
//! An upload's pieces live in buffers of 64–130 KiB that are freed as soon as the piece is
//! forwarded. With glibc's defaults the top of a thread's heap is handed back to the kernel
//! once 128 KiB of it is free (the threshold grows only after a large mmap'd block is freed),
//! so the next piece faults fresh zeroed pages in again: ~105,000 page faults per GiB of a
//! one-stream signed PUT (`perf stat -e page-faults`), ~7 % of the proxy's CPU in the kernel's
//! fault path. Keeping up to 4 MiB free at the top of each heap (and taking blocks up to 1 MiB
//! from the heaps, not from mmap) removes them: 24–65 faults in the same 6 s. Memory stays
//! bounded: what a heap keeps is at most 4 MiB beyond what was in use.
//!
//! `MALLOC_TRIM_THRESHOLD_`, `MALLOC_MMAP_THRESHOLD_` or malloc tunables in `GLIBC_TUNABLES`
//! in the environment win: then nothing is changed here.
#![allow(unsafe_code)] // mallopt: two integer settings, before any thread starts

/// Free memory a heap keeps at its top instead of returning it to the kernel.
pub const TRIM_THRESHOLD: i32 = 4 << 20;

/// Blocks from this size on are mmap'd on their own.
pub const MMAP_THRESHOLD: i32 = 1 << 20;

/// Whether the operator set malloc's thresholds in the environment.
fn set_by_environment(var: impl Fn(&str) -> Option<String>) -> bool {
    var("MALLOC_TRIM_THRESHOLD_").is_some()
        || var("MALLOC_MMAP_THRESHOLD_").is_some()
        || var("GLIBC_TUNABLES").is_some_and(|t| t.contains("glibc.malloc."))
}

/// Applies the thresholds (glibc only; a no-op elsewhere). Returns whether it did.
pub fn tune() -> bool {
    if set_by_environment(|k| std::env::var(k).ok()) {
        return false;
    }
    apply()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> bool {
    // SAFETY: mallopt only stores the two integers in malloc's parameters.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_wins() {
        let env = |pairs: &'static [(&'static str, &'static str)]| move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        assert!(!set_by_environment(env(&[])));
        assert!(!set_by_environment(env(&[("GLIBC_TUNABLES", "glibc.rtld.optional_static_tls=2048")])));
        assert!(set_by_environment(env(&[("MALLOC_TRIM_THRESHOLD_", "0")])));
        assert!(set_by_environment(env(&[("MALLOC_MMAP_THRESHOLD_", "131072")])));
        assert!(set_by_environment(env(&[("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1")])));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_takes_the_settings() {
        assert!(apply());
    }
}
