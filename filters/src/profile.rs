//! Backend profiles: what differs between S3 providers, absorbed by the proxy so that its
//! clients (PBS first) need no per-provider switches. A profile only sets defaults; every
//! switch can also be set alone (`conditional_writes`, `backend.send_if_none_match`,
//! `backend.delete_objects`, `backend.verified_writes`, `backend.normalize_listings`).
//!
//! | profile | conditional writes | `If-None-Match` sent upstream | DeleteObjects | verified writes | why |
//! |---|---|---|---|---|---|
//! | `aws` | backend | yes | native | trailer | S3 honours `If-None-Match: *` and `If-Match` on PUT |
//! | `minio` | backend | yes | native | trailer | honours both |
//! | `garage` | enforce | yes | native | trailer | ignores both and overwrites (the proxy enforces) |
//! | `b2` | enforce | no | native | off | Backblaze B2 rejects a PUT carrying `If-None-Match` (501), and aws-chunked trailers |
//! | `gcs` | enforce | yes | emulate | off | Google Cloud Storage's XML API has no multi-object delete, no aws-chunked trailers |
//! | `r2` | enforce | yes | native | off | Cloudflare R2: no aws-chunked trailers |
//! | `wasabi`, `hetzner`, `ceph`, `generic` | enforce | yes | native | trailer | support varies by version and region: the proxy enforces, which is always exact (one replica per object, see README) |
//!
//! Every profile normalises listings (`backend.normalize_listings`, `listing/normalize.rs`):
//! Google Cloud Storage omits `StorageClass`, other providers `Name`, `Prefix`, `KeyCount`,
//! `MaxKeys`, `IsTruncated` or the echoes; filling a field costs nothing where it is present,
//! so no profile turns it off. Copy headers need no switch: the proxy never sends a
//! CopyObject upstream (it re-encrypts through GET and PUT) and restores Content-Type and
//! the other descriptive headers from the sealed metadata on every read.
//!
//! "verified writes off" means the backend gets no checksum of the ciphertext it stores
//! (`docs/filters.md`, "Verified writes", lists which providers check trailers). `garage`
//! keeps the trailer although Garage 2.0–2.5 decodes aws-chunked bodies at about twice its
//! CPU per GiB (docs/filters.md says why and when `off` is safe): integrity is the default.
//!
//! `enforce` costs one HEAD per conditional write (for PBS's `If-None-Match: *` chunk uploads
//! sent alongside the body, so not a round trip of its own: `conditional.rs`); `backend` costs
//! nothing extra but is only exact where the provider implements the conditions.

use crate::conditional::ConditionalMode;
use crate::delete_emulation::DeleteObjectsMode;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Profile {
    pub name: &'static str,
    pub conditional_writes: ConditionalMode,
    pub send_if_none_match: bool,
    pub delete_objects: DeleteObjectsMode,
    /// The backend checks aws-chunked trailer checksums (`backend.verified_writes: trailer`).
    pub trailer_checksums: bool,
    /// Listings are completed and ordered as S3 sends them (`backend.normalize_listings`).
    pub normalize_listings: bool,
}

const PROFILES: &[Profile] = &[
    Profile { name: "aws", conditional_writes: ConditionalMode::Backend, send_if_none_match: true, delete_objects: DeleteObjectsMode::Native, trailer_checksums: true, normalize_listings: true },
    Profile { name: "minio", conditional_writes: ConditionalMode::Backend, send_if_none_match: true, delete_objects: DeleteObjectsMode::Native, trailer_checksums: true, normalize_listings: true },
    Profile { name: "garage", conditional_writes: ConditionalMode::Enforce, send_if_none_match: true, delete_objects: DeleteObjectsMode::Native, trailer_checksums: true, normalize_listings: true },
    Profile { name: "b2", conditional_writes: ConditionalMode::Enforce, send_if_none_match: false, delete_objects: DeleteObjectsMode::Native, trailer_checksums: false, normalize_listings: true },
    Profile { name: "wasabi", conditional_writes: ConditionalMode::Enforce, send_if_none_match: true, delete_objects: DeleteObjectsMode::Native, trailer_checksums: true, normalize_listings: true },
    Profile { name: "hetzner", conditional_writes: ConditionalMode::Enforce, send_if_none_match: true, delete_objects: DeleteObjectsMode::Native, trailer_checksums: true, normalize_listings: true },
    Profile { name: "r2", conditional_writes: ConditionalMode::Enforce, send_if_none_match: true, delete_objects: DeleteObjectsMode::Native, trailer_checksums: false, normalize_listings: true },
    Profile { name: "gcs", conditional_writes: ConditionalMode::Enforce, send_if_none_match: true, delete_objects: DeleteObjectsMode::Emulate, trailer_checksums: false, normalize_listings: true },
    Profile { name: "ceph", conditional_writes: ConditionalMode::Enforce, send_if_none_match: true, delete_objects: DeleteObjectsMode::Native, trailer_checksums: true, normalize_listings: true },
    Profile { name: "generic", conditional_writes: ConditionalMode::Enforce, send_if_none_match: true, delete_objects: DeleteObjectsMode::Native, trailer_checksums: true, normalize_listings: true },
];

impl std::str::FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PROFILES.iter().find(|p| p.name == s).copied().ok_or_else(|| {
            let names: Vec<&str> = PROFILES.iter().map(|p| p.name).collect();
            format!("backend.profile {s:?} is unknown (one of {})", names.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_parses_and_b2_never_sends_if_none_match() {
        for p in PROFILES {
            assert_eq!(p.name.parse::<Profile>().unwrap(), *p);
            // Not sending the condition is only sound when the proxy enforces it.
            assert!(p.send_if_none_match || p.conditional_writes == ConditionalMode::Enforce, "{}", p.name);
        }
        assert!(!"b2".parse::<Profile>().unwrap().send_if_none_match);
        // Normalising costs nothing where the fields are present: every profile does it.
        assert!(PROFILES.iter().all(|p| p.normalize_listings));
        assert!("s3".parse::<Profile>().unwrap_err().contains("garage"));
    }
}
