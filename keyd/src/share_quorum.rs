//! m-of-n delivery on the server: collects Shamir shares from distinct authenticated admins
//! within a window and reconstructs the master key once M of them have arrived.
//!
//! ```text
//!             first share                      M-th distinct admin
//!   IDLE ───────────────────▶ COLLECTING ─────────────────────────▶ combine + kcv check
//!     ▲                        │   │  ▲ share from an admin already         │ ok: key to vault
//!     │   window elapsed       │   │  │ counted: not counted again           │ bad: refused
//!     └────────────────────────┘   └──┘                                      ▼
//!     └──────────────────────────────────────────────────────── shares wiped, back to IDLE
//! ```
//!
//! * A round belongs to one split: key id, threshold and key-check value of its first share.
//!   A share of another split during a round is refused (the round is not disturbed).
//! * One admin counts once, whatever it sends; two admins sending the same share index are
//!   refused (the second one), since the index identifies the share, not the person.
//! * Shares are held in one fixed, page-locked block, wiped on every exit from COLLECTING.

use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use s3cp_format::keys::{KeyId, MasterKey};
use subtle::ConstantTimeEq;

use crate::harden::MemoryLock;
use crate::shamir::{combine, KeyShare, ShareError, MAX_SHARES};

/// m-of-n settings (`shares:` in memkey.yaml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareSettings {
    /// M: distinct admins needed.
    pub threshold: u8,
    /// Time from the first share of a round until its shares are discarded.
    pub window: Duration,
}

struct Held {
    admin: VerifyingKey,
    share: KeyShare,
}

struct Slots {
    held: [Option<Held>; MAX_SHARES as usize],
}

struct Round {
    started: Instant,
    make_current: bool,
    key_id: KeyId,
    kcv: [u8; 8],
}

/// Progress after an accepted share.
#[derive(Debug)]
pub enum Offered {
    /// Held; `counted` is false when this admin had already delivered a share in this round.
    Held {
        key_id: KeyId,
        distinct_admins: usize,
        threshold: u8,
        counted: bool,
    },
    /// M distinct admins delivered; the key matched its key-check value. Shares are wiped.
    Reconstructed {
        key: MasterKey,
        admins: Vec<VerifyingKey>,
        make_current: bool,
    },
}

/// Why a share was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The share was made for another threshold than the server's.
    ThresholdMismatch { got: u8, want: u8 },
    /// Another key's shares are being collected.
    OtherRoundInProgress { key_id: KeyId },
    /// Another admin already delivered the share with this index.
    IndexTaken { index: u8 },
    /// The M shares did not reconstruct the key of the key-check value; all shares wiped.
    Reconstruction {
        key_id: KeyId,
        why: ShareError,
        admins: Vec<VerifyingKey>,
    },
}

/// Shares discarded because the window ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub key_id: KeyId,
    pub discarded: usize,
}

/// The collector. Not shared by itself: the service keeps it behind a mutex.
pub struct ShareQuorum {
    settings: ShareSettings,
    round: Option<Round>,
    slots: Box<Slots>,
    _lock: Result<MemoryLock, String>,
}

impl ShareQuorum {
    pub fn new(settings: ShareSettings) -> Self {
        let slots = Box::new(Slots {
            held: std::array::from_fn(|_| None),
        });
        let lock = MemoryLock::of(&*slots);
        if let Err(why) = &lock {
            log::warn!("share memory is not locked in RAM: {why}");
        }
        Self {
            settings,
            round: None,
            slots,
            _lock: lock,
        }
    }

    pub fn settings(&self) -> ShareSettings {
        self.settings
    }

    /// Distinct admins whose shares are held.
    pub fn held(&self) -> usize {
        self.slots.held.iter().flatten().count()
    }

    /// Discards the round when its window has elapsed.
    pub fn expire(&mut self, now: Instant) -> Option<Expired> {
        let round = self.round.as_ref()?;
        if now.duration_since(round.started) <= self.settings.window {
            return None;
        }
        let key_id = round.key_id;
        let discarded = self.wipe();
        Some(Expired { key_id, discarded })
    }

    /// Wipes every held share and returns to IDLE; returns how many were held.
    pub fn wipe(&mut self) -> usize {
        let n = self.held();
        // Dropping a KeyShare zeroizes its value (Zeroizing).
        for slot in self.slots.held.iter_mut() {
            *slot = None;
        }
        self.round = None;
        n
    }

    /// One authenticated share from `admin`. Call [`ShareQuorum::expire`] first.
    pub fn offer(
        &mut self,
        now: Instant,
        admin: VerifyingKey,
        share: KeyShare,
        make_current: bool,
    ) -> Result<Offered, Refusal> {
        let want = self.settings.threshold;
        if share.threshold != want {
            return Err(Refusal::ThresholdMismatch {
                got: share.threshold,
                want,
            });
        }
        match &self.round {
            Some(r) if r.key_id != share.key_id || !bool::from(r.kcv.ct_eq(&share.kcv)) => {
                return Err(Refusal::OtherRoundInProgress { key_id: r.key_id });
            }
            Some(_) => {}
            None => {
                self.round = Some(Round {
                    started: now,
                    make_current,
                    key_id: share.key_id,
                    kcv: share.kcv,
                })
            }
        }
        let key_id = share.key_id;
        let held = self.slots.held.iter().flatten();
        let mut already = false;
        let mut index_taken = false;
        for h in held {
            if h.admin.as_bytes().ct_eq(admin.as_bytes()).into() {
                already = true;
            } else if h.share.index == share.index {
                index_taken = true;
            }
        }
        if already {
            // Same admin again: counts once; the new share is dropped (and wiped).
            return Ok(Offered::Held {
                key_id,
                distinct_admins: self.held(),
                threshold: want,
                counted: false,
            });
        }
        if index_taken {
            return Err(Refusal::IndexTaken { index: share.index });
        }
        let slot = self
            .slots
            .held
            .iter_mut()
            .find(|s| s.is_none())
            .expect("fewer than 255 held: the round ends at threshold <= 255");
        *slot = Some(Held { admin, share });
        let n = self.held();
        if n < usize::from(want) {
            return Ok(Offered::Held {
                key_id,
                distinct_admins: n,
                threshold: want,
                counted: true,
            });
        }
        let make_current = self.round.as_ref().is_some_and(|r| r.make_current);
        let admins: Vec<VerifyingKey> = self.slots.held.iter().flatten().map(|h| h.admin).collect();
        let result = {
            let shares: Vec<&KeyShare> =
                self.slots.held.iter().flatten().map(|h| &h.share).collect();
            combine(&shares)
        };
        self.wipe();
        match result {
            Ok(key) => Ok(Offered::Reconstructed {
                key,
                admins,
                make_current,
            }),
            Err(why) => Err(Refusal::Reconstruction {
                key_id,
                why,
                admins,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::generate_identity;
    use crate::shamir::split;

    fn quorum(threshold: u8, window_ms: u64) -> ShareQuorum {
        ShareQuorum::new(ShareSettings {
            threshold,
            window: Duration::from_millis(window_ms),
        })
    }

    fn admins(n: usize) -> Vec<VerifyingKey> {
        (0..n)
            .map(|_| generate_identity().verifying_key())
            .collect()
    }

    #[test]
    fn m_minus_one_shares_load_nothing_and_m_reconstruct() {
        let key = MasterKey::generate(4);
        let shares = split(&key, 3, 4).unwrap();
        let a = admins(3);
        let mut q = quorum(3, 60_000);
        let t = Instant::now();
        for i in 0..2 {
            match q.offer(t, a[i], shares[i].clone(), true).unwrap() {
                Offered::Held {
                    distinct_admins,
                    counted,
                    ..
                } => assert_eq!((distinct_admins, counted), (i + 1, true)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(q.held(), 2);
        match q.offer(t, a[2], shares[3].clone(), true).unwrap() {
            Offered::Reconstructed {
                key: k,
                admins: who,
                make_current,
            } => {
                assert_eq!(k.expose(), key.expose());
                assert_eq!(who.len(), 3);
                assert!(make_current);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(q.held(), 0, "shares are wiped after reconstruction");
    }

    #[test]
    fn the_same_admin_twice_counts_once() {
        let key = MasterKey::generate(1);
        let shares = split(&key, 2, 3).unwrap();
        let a = admins(2);
        let mut q = quorum(2, 60_000);
        let t = Instant::now();
        q.offer(t, a[0], shares[0].clone(), false).unwrap();
        // Same admin, same share, then a different share: neither counts.
        for s in [&shares[0], &shares[1]] {
            match q.offer(t, a[0], s.clone(), false).unwrap() {
                Offered::Held {
                    distinct_admins,
                    counted,
                    ..
                } => assert_eq!((distinct_admins, counted), (1, false)),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            q.offer(t, a[1], shares[2].clone(), false).unwrap(),
            Offered::Reconstructed { .. }
        ));
    }

    #[test]
    fn the_window_discards_the_shares() {
        let key = MasterKey::generate(1);
        let shares = split(&key, 2, 2).unwrap();
        let a = admins(2);
        let mut q = quorum(2, 1_000);
        let t = Instant::now();
        q.offer(t, a[0], shares[0].clone(), false).unwrap();
        assert_eq!(q.expire(t + Duration::from_millis(500)), None);
        assert_eq!(
            q.expire(t + Duration::from_millis(1_001)),
            Some(Expired {
                key_id: 1,
                discarded: 1
            })
        );
        assert_eq!(q.held(), 0);
        // The second share alone starts a new round; nothing is loaded.
        assert!(matches!(
            q.offer(t + Duration::from_secs(2), a[1], shares[1].clone(), false)
                .unwrap(),
            Offered::Held {
                distinct_admins: 1,
                ..
            }
        ));
    }

    #[test]
    fn foreign_and_wrong_shares_are_refused() {
        let key = MasterKey::generate(1);
        let shares = split(&key, 2, 3).unwrap();
        let other = split(&MasterKey::generate(2), 2, 3).unwrap();
        let three = split(&key, 3, 3).unwrap();
        let a = admins(3);
        let mut q = quorum(2, 60_000);
        let t = Instant::now();
        assert_eq!(
            q.offer(t, a[0], three[0].clone(), false).unwrap_err(),
            Refusal::ThresholdMismatch { got: 3, want: 2 }
        );
        q.offer(t, a[0], shares[0].clone(), false).unwrap();
        assert_eq!(
            q.offer(t, a[1], other[1].clone(), false).unwrap_err(),
            Refusal::OtherRoundInProgress { key_id: 1 }
        );
        assert_eq!(
            q.offer(t, a[1], shares[0].clone(), false).unwrap_err(),
            Refusal::IndexTaken { index: 1 }
        );
        // A corrupted share: reconstruction fails the key check and everything is wiped.
        let mut bad = shares[1].clone();
        bad.value[3] ^= 0x80;
        match q.offer(t, a[1], bad, false).unwrap_err() {
            Refusal::Reconstruction { why, admins, .. } => {
                assert_eq!(why, ShareError::KcvMismatch);
                assert_eq!(admins.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(q.held(), 0);
    }
}
