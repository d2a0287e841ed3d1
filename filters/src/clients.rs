//! The clients the proxy accepts: each an access key with one or more secrets (several
//! during a rotation), a role, the buckets (and key prefixes) it may reach, and optional
//! rate limits. The sigv4 filter finds the client by access key and leaves it in the
//! request context; the allowlist filter enforces its role and grants.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sigv4::Credentials;

/// What a client may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// GET and HEAD only: reads, listings, HEADs. No write of any kind.
    ReadOnly,
    ReadWrite,
    /// Read-write, and its secret also opens the admin API (`Bearer <access key>:<secret>`).
    Admin,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read-only" => Ok(Role::ReadOnly),
            "read-write" => Ok(Role::ReadWrite),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?} (read-only, read-write or admin)")),
        }
    }
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::ReadOnly => "read-only",
            Role::ReadWrite => "read-write",
            Role::Admin => "admin",
        }
    }

    /// Read-only clients may only use methods that change nothing.
    pub fn allows_method(self, method: &str) -> bool {
        self != Role::ReadOnly || matches!(method, "GET" | "HEAD")
    }
}

/// A bucket a client may reach, whole or below some key prefixes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub bucket: String,
    /// Empty: the whole bucket.
    pub prefixes: Vec<String>,
}

impl Grant {
    /// `bucket` or `bucket/prefix` (the prefix is everything after the first `/`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (bucket, prefix) = match s.split_once('/') {
            Some((b, p)) => (b, Some(p)),
            None => (s, None),
        };
        if bucket.is_empty() {
            return Err(format!("bucket grant {s:?} has no bucket"));
        }
        Ok(Grant { bucket: bucket.into(), prefixes: prefix.filter(|p| !p.is_empty()).map(|p| vec![p.to_string()]).unwrap_or_default() })
    }

    pub fn allows_key(&self, key: &str) -> bool {
        self.prefixes.is_empty() || self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    /// A listing stays inside the grant when its prefix lies below one of the granted ones.
    pub fn allows_listing(&self, prefix: &str) -> bool {
        self.allows_key(prefix)
    }
}

/// Requests and bytes per second, each with a burst of one second's worth.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RateLimit {
    pub requests_per_second: Option<f64>,
    pub bytes_per_second: Option<f64>,
}

/// A token bucket that may run into debt: a transfer is charged when its size is known
/// (an upload's at its start, a download's when the backend answers), and new requests
/// wait until the debt is paid back. So a client's long-run rate is the limit, whatever
/// the sizes, without knowing a download's size before it is asked for.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: f64) -> Self {
        Bucket { rate, level: rate, at: Instant::now() }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + dt * self.rate).min(self.rate);
        self.at = now;
    }

    /// Time until the level is positive again (zero when it is).
    fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.level > 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((-self.level + 1.0) / self.rate)
        }
    }

    fn charge(&mut self, now: Instant, amount: f64) {
        self.refill(now);
        self.level -= amount;
    }
}

#[derive(Debug, Default)]
struct Limiter {
    requests: Option<Bucket>,
    bytes: Option<Bucket>,
}

/// One configured client.
#[derive(Debug)]
pub struct Client {
    pub access_key: String,
    /// The current secret first, then those still accepted during a rotation.
    pub secrets: Vec<Credentials>,
    pub role: Role,
    /// Empty: the proxy-wide `allowed_buckets` apply.
    pub grants: Vec<Grant>,
    limiter: Mutex<Limiter>,
}

impl Client {
    pub fn new(access_key: impl Into<String>, secrets: Vec<String>, role: Role, grants: Vec<Grant>, rate: RateLimit) -> Self {
        let access_key = access_key.into();
        let secrets = secrets.into_iter().map(|s| Credentials::new(access_key.clone(), s)).collect();
        let limiter = Limiter {
            requests: rate.requests_per_second.map(Bucket::new),
            bytes: rate.bytes_per_second.map(Bucket::new),
        };
        Client { access_key, secrets, role, grants, limiter: Mutex::new(limiter) }
    }

    /// The grant covering `bucket`, if the client has its own grants; `None` when it has
    /// none (then the proxy-wide list decides) or when no grant names the bucket.
    pub fn grant(&self, bucket: &str) -> Option<&Grant> {
        self.grants.iter().find(|g| g.bucket == bucket)
    }

    /// Admits a request (charging one request), or says how long to wait.
    pub fn admit(&self, upload_bytes: u64) -> Result<(), Duration> {
        let now = Instant::now();
        let mut guard = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        let l = &mut *guard;
        let wait = [l.requests.as_mut(), l.bytes.as_mut()].into_iter().flatten().map(|b| b.wait(now)).max().unwrap_or_default();
        if !wait.is_zero() {
            return Err(wait);
        }
        if let Some(r) = l.requests.as_mut() {
            r.charge(now, 1.0);
        }
        if let Some(b) = l.bytes.as_mut() {
            b.charge(now, upload_bytes as f64);
        }
        Ok(())
    }

    /// Charges bytes learnt after admission (a download's length).
    pub fn charge_bytes(&self, bytes: u64) {
        let mut l = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = l.bytes.as_mut() {
            b.charge(Instant::now(), bytes as f64);
        }
    }

    pub fn limited(&self) -> bool {
        let l = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        l.requests.is_some() || l.bytes.is_some()
    }
}

/// Every configured client, by access key.
#[derive(Debug, Default)]
pub struct Clients {
    by_key: HashMap<String, Arc<Client>>,
}

impl Clients {
    pub fn new(clients: Vec<Client>) -> Result<Self, String> {
        let mut by_key = HashMap::new();
        for c in clients {
            if c.secrets.is_empty() {
                return Err(format!("client {:?} has no secret", c.access_key));
            }
            let key = c.access_key.clone();
            if by_key.insert(key.clone(), Arc::new(c)).is_some() {
                return Err(format!("client access key {key:?} is configured twice"));
            }
        }
        if by_key.is_empty() {
            return Err("no client is configured".into());
        }
        Ok(Clients { by_key })
    }

    /// The single `client:` of older configurations: read-write, proxy-wide bucket list.
    pub fn single(creds: Credentials) -> Self {
        let c = Client::new(creds.access_key.clone(), vec![creds.secret().to_string()], Role::ReadWrite, Vec::new(), RateLimit::default());
        Clients { by_key: HashMap::from([(c.access_key.clone(), Arc::new(c))]) }
    }

    pub fn get(&self, access_key: &str) -> Option<&Arc<Client>> {
        self.by_key.get(access_key)
    }

    pub fn access_keys(&self) -> impl Iterator<Item = &str> {
        self.by_key.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Client>> {
        self.by_key.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_buckets_and_prefixes() {
        assert_eq!(Grant::parse("b").unwrap(), Grant { bucket: "b".into(), prefixes: vec![] });
        let g = Grant::parse("b/host-1/").unwrap();
        assert!(g.allows_key("host-1/x") && !g.allows_key("host-2/x") && !g.allows_key("host-1"));
        assert!(Grant::parse("/x").is_err());
        assert_eq!(Grant::parse("b/").unwrap().prefixes, Vec::<String>::new());
    }

    #[test]
    fn read_only_allows_only_get_and_head() {
        for m in ["GET", "HEAD"] {
            assert!(Role::ReadOnly.allows_method(m));
        }
        for m in ["PUT", "POST", "DELETE", "PATCH", "OPTIONS"] {
            assert!(!Role::ReadOnly.allows_method(m), "{m}");
            assert!(Role::ReadWrite.allows_method(m));
        }
    }

    #[test]
    fn request_rate_is_limited_with_a_wait() {
        let c = Client::new("a", vec!["s".into()], Role::ReadWrite, vec![], RateLimit { requests_per_second: Some(5.0), bytes_per_second: None });
        let admitted = (0..20).filter(|_| c.admit(0).is_ok()).count();
        assert!((5..=6).contains(&admitted), "{admitted}");
        let wait = c.admit(0).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(400), "{wait:?}");
    }

    /// A download larger than the budget is served, then the client waits it off.
    #[test]
    fn byte_debt_is_paid_back_before_the_next_request() {
        let c = Client::new("a", vec!["s".into()], Role::ReadWrite, vec![], RateLimit { requests_per_second: None, bytes_per_second: Some(1000.0) });
        assert!(c.admit(0).is_ok());
        c.charge_bytes(3000);
        let wait = c.admit(0).unwrap_err();
        assert!(wait >= Duration::from_millis(1900) && wait <= Duration::from_millis(2100), "{wait:?}");
        assert!(!Client::new("b", vec!["s".into()], Role::ReadOnly, vec![], RateLimit::default()).limited());
    }

    #[test]
    fn access_keys_are_unique_and_need_a_secret() {
        let mk = |k: &str, s: Vec<String>| Client::new(k, s, Role::ReadWrite, vec![], RateLimit::default());
        assert!(Clients::new(vec![mk("a", vec!["1".into()]), mk("a", vec!["2".into()])]).unwrap_err().contains("twice"));
        assert!(Clients::new(vec![mk("a", vec![])]).unwrap_err().contains("no secret"));
        let cs = Clients::new(vec![mk("a", vec!["1".into(), "2".into()])]).unwrap();
        assert_eq!(cs.get("a").unwrap().secrets.len(), 2);
        assert!(cs.get("b").is_none());
    }
}
