//! Backend profiles: what differs between S3 providers, absorbed by the proxy so that its
//! clients (PBS first) need no per-provider switches. A profile only sets defaults; every
//! switch can also be set alone (`conditional_writes`, `backend.send_if_none_match`).
//!
//! | profile | conditional writes | `If-None-Match` sent upstream | DeleteObjects | why |
//! |---|---|---|---|---|
//! | `aws` | backend | yes | native | S3 honours `If-None-Match: *` and `If-Match` on PUT |
//! | `minio` | backend | yes | native | honours both |
//! | `garage` | enforce | yes | native | ignores both and overwrites (the proxy enforces) |
//! | `b2` | enforce | no | native | Backblaze B2 rejects a PUT carrying `If-None-Match` (501) |
//! | `gcs` | enforce | yes | emulate | Google Cloud Storage's XML API has no multi-object delete |
//! | `wasabi`, `hetzner`, `r2`, `ceph`, `generic` | enforce | yes | native | support varies by version and region: the proxy enforces, which is always exact (one replica per object, see README) |
//!
//! `enforce` costs one HEAD per conditional write; `backend` costs nothing extra but is only
//! exact where the provider implements the conditions.

use crate::conditional::ConditionalMode;
use crate::delete_emulation::DeleteObjectsMode;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Profile {
    pub name: &'static str,
    pub conditional_writes: ConditionalMode,
    pub send_if_none_match: bool,
    pub delete_objects: DeleteObjectsMode,
}

const PROFILES: &[Profile] = &[
    Profile { name: "aws", conditional_writes: ConditionalMode::Backend, send_if_none_match: true, delete_objects: DeleteObjectsMode::Native },
    Profile { name: "minio", conditional_writes: ConditionalMode::Backend, send_if_none_match: true, delete_objects: DeleteObjectsMode::Native },
    Profile { name: "garage", conditional_writes: ConditionalMode::Enforce, send_if_none_match: true, delete_objects: DeleteObjectsMode::Native },
    Profile { name: "b2", conditional_writes: ConditionalMode::Enforce, send_if_none_match: false, delete_objects: DeleteObjectsMode::Native },
    Profile { name: "wasabi", conditional_writes: ConditionalMode::Enforce, send_if_none_match: true, delete_objects: DeleteObjectsMode::Native },
    Profile { name: "hetzner", conditional_writes: ConditionalMode::Enforce, send_if_none_match: true, delete_objects: DeleteObjectsMode::Native },
    Profile { name: "r2", conditional_writes: ConditionalMode::Enforce, send_if_none_match: true, delete_objects: DeleteObjectsMode::Native },
    Profile { name: "gcs", conditional_writes: ConditionalMode::Enforce, send_if_none_match: true, delete_objects: DeleteObjectsMode::Emulate },
    Profile { name: "ceph", conditional_writes: ConditionalMode::Enforce, send_if_none_match: true, delete_objects: DeleteObjectsMode::Native },
    Profile { name: "generic", conditional_writes: ConditionalMode::Enforce, send_if_none_match: true, delete_objects: DeleteObjectsMode::Native },
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
        assert!("s3".parse::<Profile>().unwrap_err().contains("garage"));
    }
}
