//! The chain: filters in the order the configuration lists them, checked once at start-up.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::ctx::RequestCtx;
use crate::error::S3Error;
use crate::filter::{Filter, Flow};
use crate::xml_body::HeldBody;

/// The filters a configuration can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterKind {
    Sigv4,
    Allowlist,
    Conditional,
    Crypto,
    Listing,
    Resign,
}

impl FilterKind {
    pub const ALL: [FilterKind; 6] = [
        FilterKind::Sigv4,
        FilterKind::Allowlist,
        FilterKind::Conditional,
        FilterKind::Crypto,
        FilterKind::Listing,
        FilterKind::Resign,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FilterKind::Sigv4 => "sigv4",
            FilterKind::Allowlist => "allowlist",
            FilterKind::Conditional => "conditional",
            FilterKind::Crypto => "crypto",
            FilterKind::Listing => "listing",
            FilterKind::Resign => "resign",
        }
    }

    /// The chain a configuration gets when it names none.
    pub fn default_chain() -> Vec<FilterKind> {
        Self::ALL.to_vec()
    }
}

impl fmt::Display for FilterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FilterKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|k| k.name()).collect();
            format!("unknown filter {s:?} in filters: (known: {})", names.join(", "))
        })
    }
}

/// Refuses orders that cannot work, saying why. `key_configured` is true when a key
/// source (memkey) is configured, i.e. the operator expects encryption.
pub fn validate_order(kinds: &[FilterKind], key_configured: bool) -> Result<(), String> {
    use FilterKind::*;
    let pos = |k: FilterKind| kinds.iter().position(|x| *x == k);
    for (i, k) in kinds.iter().enumerate() {
        if kinds[..i].contains(k) {
            return Err(format!("filters: {k} is listed twice"));
        }
    }
    if pos(Sigv4) != Some(0) {
        return Err("filters: sigv4 must come first: every other filter acts on behalf of an authenticated client".into());
    }
    if pos(Resign) != Some(kinds.len() - 1) {
        return Err("filters: resign must come last: it signs the request exactly as the backend receives it, so nothing may change it afterwards".into());
    }
    match (pos(Crypto), key_configured) {
        (None, true) => {
            return Err("filters: crypto is missing although a key source (memkey) is configured: objects would be stored in plaintext. Add crypto, or remove memkey for a pass-through proxy".into())
        }
        (Some(_), false) => return Err("filters: crypto needs a key source: set memkey.socket_path".into()),
        _ => {}
    }
    match (pos(Crypto), pos(Listing)) {
        (Some(_), None) => {
            return Err("filters: crypto without listing: listings would report ciphertext sizes to clients. Add listing".into())
        }
        (None, Some(_)) => return Err("filters: listing rewrites sizes of encrypted objects and needs crypto".into()),
        _ => {}
    }
    if let (Some(a), Some(c)) = (pos(Allowlist), pos(Conditional)) {
        if a > c {
            return Err("filters: allowlist must come before conditional: a disallowed bucket must not even be probed".into());
        }
    }
    if let (Some(a), Some(c)) = (pos(Allowlist), pos(Crypto)) {
        if a > c {
            return Err("filters: allowlist must come before crypto: copies read the source bucket, which must be checked first".into());
        }
    }
    if let (Some(c), Some(e)) = (pos(Conditional), pos(Crypto)) {
        if c > e {
            return Err("filters: conditional must come before crypto: a refused write must be refused before any data is encrypted".into());
        }
    }
    Ok(())
}

/// The filters of one proxy, in request order.
#[derive(Clone)]
pub struct Chain {
    filters: Vec<Arc<dyn Filter>>,
}

impl Chain {
    pub fn new(filters: Vec<Arc<dyn Filter>>) -> Self {
        Self { filters }
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.filters.iter().map(|f| f.name()).collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.filters.iter().any(|f| f.name() == name)
    }

    pub async fn request(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Result<Flow, S3Error> {
        for f in &self.filters {
            if let Flow::Respond(r) = f.request(req, ctx).await? {
                return Ok(Flow::Respond(r));
            }
        }
        // Whatever the filters, an XML body reaches the backend only once it was checked
        // (after the filters: the client is authenticated and the body is what goes on).
        let s3 = ctx.s3()?;
        // A client's grant is copied only for the rare request whose body is held (DeleteObjects).
        ctx.xml_body = match HeldBody::for_request(s3)? {
            Some(h) => match (&ctx.client, &s3.bucket) {
                (Some(c), Some(b)) => match c.grant(b) {
                    Some(g) => Some(h.keys_within(g.clone())),
                    None => Some(h),
                },
                _ => Some(h),
            },
            None => None,
        };
        Ok(Flow::Continue)
    }

    pub async fn upstream_request(&self, up: &mut RequestHeader, ctx: &mut RequestCtx) -> Result<(), S3Error> {
        for f in &self.filters {
            f.upstream_request(up, ctx).await?;
        }
        if let Some(held) = ctx.xml_body.as_mut() {
            held.restart();
        }
        Ok(())
    }

    pub fn request_body(&self, body: &mut Option<Bytes>, end: bool, ctx: &mut RequestCtx) -> Result<(), S3Error> {
        for f in &self.filters {
            f.request_body(body, end, ctx)?;
        }
        if let Some(held) = ctx.xml_body.as_mut() {
            held.hold(body, end)?;
        }
        Ok(())
    }

    pub async fn upstream_response(&self, resp: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<(), S3Error> {
        for f in self.filters.iter().rev() {
            f.upstream_response(resp, ctx).await?;
        }
        Ok(())
    }

    pub fn response_body(&self, body: &mut Option<Bytes>, end: bool, ctx: &mut RequestCtx) -> Result<(), S3Error> {
        for f in self.filters.iter().rev() {
            f.response_body(body, end, ctx)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::FilterKind::*;
    use super::*;

    #[test]
    fn default_chain_is_valid() {
        validate_order(&FilterKind::default_chain(), true).unwrap();
    }

    #[test]
    fn pass_through_chain_is_valid_without_a_key() {
        validate_order(&[Sigv4, Allowlist, Conditional, Resign], false).unwrap();
    }

    #[test]
    fn bad_orders_are_refused_with_a_reason() {
        let cases: &[(&[FilterKind], bool, &str)] = &[
            (&[Allowlist, Sigv4, Crypto, Listing, Resign], true, "sigv4 must come first"),
            (&[Sigv4, Resign, Crypto, Listing], true, "resign must come last"),
            (&[Sigv4, Allowlist, Resign], true, "crypto is missing"),
            (&[Sigv4, Crypto, Resign], true, "crypto without listing"),
            (&[Sigv4, Crypto, Allowlist, Listing, Resign], true, "allowlist must come before crypto"),
            (&[Sigv4, Crypto, Conditional, Listing, Resign], true, "conditional must come before crypto"),
            (&[Sigv4, Sigv4, Resign], false, "listed twice"),
            (&[Sigv4, Crypto, Listing, Resign], false, "needs a key source"),
        ];
        for (order, key, why) in cases {
            let e = validate_order(order, *key).unwrap_err();
            assert!(e.contains(why), "{order:?}: {e}");
        }
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let e = "encrypt".parse::<FilterKind>().unwrap_err();
        assert!(e.contains("crypto") && e.contains("sigv4"));
    }
}
