//! Which objects without sealed metadata may be served as plaintext
//! (`unencrypted_objects: passthrough`).
//!
//! A backend writer can strip `x-amz-meta-s3cp` from any object, or put a plaintext object
//! under any key, so "has no metadata" proves nothing. Only objects that provably predate
//! encryption are admitted: last written before a configured cut-off (the backend sets
//! Last-Modified; nobody writing now can date an object in the past), or under a configured
//! prefix of legacy objects. Everything else without valid metadata is refused.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The operator's declaration of the objects that predate encryption.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LegacyObjects {
    /// Objects last modified strictly before this instant.
    pub before: Option<OffsetDateTime>,
    /// Objects whose key starts with one of these (non-empty) prefixes.
    pub prefixes: Vec<String>,
}

impl LegacyObjects {
    /// Builds the declaration from the configuration's `unencrypted_before` (RFC 3339) and
    /// `unencrypted_prefixes`; at least one of them is required.
    pub fn from_config(before: Option<&str>, prefixes: Vec<String>) -> Result<Self, String> {
        let before = match before.map(str::trim).filter(|s| !s.is_empty()) {
            Some(s) => Some(OffsetDateTime::parse(s, &Rfc3339).map_err(|e| {
                format!("unencrypted_before: {s:?} is not an RFC 3339 time like 2026-01-31T00:00:00Z ({e})")
            })?),
            None => None,
        };
        if prefixes.iter().any(|p| p.is_empty()) {
            return Err("unencrypted_prefixes: an empty prefix would admit every object; list the prefixes that hold only objects written before encryption".into());
        }
        if before.is_none() && prefixes.is_empty() {
            return Err("unencrypted_objects: passthrough needs unencrypted_before (an RFC 3339 time before which objects predate encryption) and/or unencrypted_prefixes: without them any object stripped of its metadata on the backend would be served as plaintext".into());
        }
        Ok(Self { before, prefixes })
    }

    /// Whether the key is under a declared legacy prefix.
    pub fn has_prefix(&self, key: &str) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    /// Whether an object last modified at `last_modified` predates the cut-off.
    pub fn predates(&self, last_modified: Option<OffsetDateTime>) -> bool {
        matches!((self.before, last_modified), (Some(cut), Some(lm)) if lm < cut)
    }

    /// Whether an object without sealed metadata may be served as plaintext.
    pub fn admits(&self, key: &str, last_modified: Option<OffsetDateTime>) -> bool {
        self.has_prefix(key) || self.predates(last_modified)
    }
}

/// An HTTP `Last-Modified` value (IMF-fixdate).
pub fn http_date(v: &str) -> Option<OffsetDateTime> {
    httpdate::parse_http_date(v.trim()).ok().map(OffsetDateTime::from)
}

/// A listing's `<LastModified>` value (ISO 8601 / RFC 3339, e.g. `2026-01-01T00:00:00.000Z`).
pub fn listing_date(v: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(v.trim(), &Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passthrough_needs_a_cut_off_or_a_prefix() {
        let e = LegacyObjects::from_config(None, vec![]).unwrap_err();
        assert!(e.contains("unencrypted_before") && e.contains("unencrypted_prefixes"), "{e}");
        assert!(!e.contains('\n'));
        assert!(LegacyObjects::from_config(Some("yesterday"), vec![]).unwrap_err().contains("RFC 3339"));
        assert!(LegacyObjects::from_config(None, vec![String::new()]).unwrap_err().contains("empty prefix"));
        assert!(LegacyObjects::from_config(Some("2026-01-31T00:00:00Z"), vec![]).is_ok());
        assert!(LegacyObjects::from_config(None, vec!["legacy/".into()]).is_ok());
    }

    #[test]
    fn only_objects_before_the_cut_off_or_under_a_prefix_are_admitted() {
        let l = LegacyObjects::from_config(Some("2026-01-31T12:00:00+01:00"), vec!["old/".into()]).unwrap();
        assert!(l.admits("x", listing_date("2026-01-31T10:59:59.999Z")));
        assert!(!l.admits("x", listing_date("2026-01-31T11:00:00.000Z")));
        assert!(l.admits("x", http_date("Sat, 31 Jan 2026 10:00:00 GMT")));
        assert!(!l.admits("x", http_date("Sat, 31 Jan 2026 11:00:01 GMT")));
        assert!(!l.admits("x", None));
        assert!(l.admits("old/x", None));
        assert!(!l.admits("older/x", None));
        let no_date = LegacyObjects::from_config(None, vec!["old/".into()]).unwrap();
        assert!(!no_date.admits("x", listing_date("1999-01-01T00:00:00Z")));
    }
}
