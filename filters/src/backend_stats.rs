//! What the proxy asks of its backend, counted: requests by kind and the connections (TLS
//! handshakes for an `https://` backend) they needed. Against a remote backend every
//! request is a round trip and every new connection one or two more, so these counters are
//! how an operator (and `bench/remote.py`) sees the proxy's cost per client operation.
//!
//! Two paths reach the backend: the client's request relayed by pingora (`proxied`, counted
//! in the proxy's `connected_to_upstream`), and the side requests that filters send through
//! [`crate::backend::Backend::open`] (existence checks of conditional writes, segment-header
//! reads, listing size probes, copies, the readiness probe). A side request's kind is read
//! from the request itself, so callers need not say what they send. The statics are
//! registered by the proxy's metrics registry (`proxy/src/metrics.rs`).

use std::sync::LazyLock;

use pingora::http::RequestHeader;
use prometheus::{IntCounterVec, Opts};

/// Backend requests by kind: `proxied` (the client's own request), or a side request:
/// `head` (object), `head_bucket`, `get`, `range_get`, `list`, `put`, `post`, `delete`, `other`.
pub static BACKEND_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "s3_crypt_proxy_backend_requests_total",
            "Requests sent to the backend by kind: proxied (a client's request relayed) or a side request of a filter (head, head_bucket, get, range_get, list, put, post, delete, other)",
        ),
        &["kind"],
    )
    .expect("valid metric")
});

/// New connections to the backend (a pooled connection reused is not counted), by path.
pub static BACKEND_CONNECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "s3_crypt_proxy_backend_connections_total",
            "New connections opened to the backend (pooled connections reused are not counted), by path: proxied or side",
        ),
        &["path"],
    )
    .expect("valid metric")
});

/// TLS handshakes with the backend (each new connection to an `https://` backend), by path.
pub static BACKEND_TLS_HANDSHAKES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "s3_crypt_proxy_backend_tls_handshakes_total",
            "TLS handshakes with the backend (one per new connection to an https:// backend), by path: proxied or side",
        ),
        &["path"],
    )
    .expect("valid metric")
});

fn connection(path: &str, reused: bool, tls: bool) {
    if !reused {
        BACKEND_CONNECTIONS.with_label_values(&[path]).inc();
        if tls {
            BACKEND_TLS_HANDSHAKES.with_label_values(&[path]).inc();
        }
    }
}

/// A client's request is about to go to the backend on a new (`reused: false`) or pooled connection.
pub fn proxied_request(reused: bool, tls: bool) {
    BACKEND_REQUESTS.with_label_values(&["proxied"]).inc();
    connection("proxied", reused, tls);
}

/// A filter's side request is about to go to the backend (`path_style`: the backend's
/// addressing, see [`side_kind`]).
pub fn side_request(req: &RequestHeader, path_style: bool, reused: bool, tls: bool) {
    BACKEND_REQUESTS.with_label_values(&[side_kind(req, path_style)]).inc();
    connection("side", reused, tls);
}

/// What a side request is, from its method, path and query. In path style the first path
/// segment is the bucket, so an object request has a second one; in virtual-host style the
/// bucket is in the Host and any path but `/` names an object.
pub fn side_kind(req: &RequestHeader, path_style: bool) -> &'static str {
    let query = req.uri.query().unwrap_or("");
    let has = |name: &str| query.split('&').any(|p| p.split('=').next() == Some(name));
    let path = req.uri.path().trim_start_matches('/');
    let names_object = if path_style { path.split_once('/').is_some_and(|(_, key)| !key.is_empty()) } else { !path.is_empty() };
    match req.method.as_str() {
        "HEAD" if names_object => "head",
        "HEAD" => "head_bucket",
        "GET" if has("list-type") || has("uploads") || has("uploadId") || has("versions") || !names_object => "list",
        "GET" if req.headers.contains_key("range") => "range_get",
        "GET" => "get",
        "PUT" => "put",
        "POST" => "post",
        "DELETE" => "delete",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, pq: &str, range: bool) -> RequestHeader {
        let mut r = RequestHeader::build(method, pq.as_bytes(), None).unwrap();
        if range {
            r.insert_header("range", "bytes=0-107").unwrap();
        }
        r
    }

    #[test]
    fn side_requests_are_named_by_what_they_ask() {
        assert_eq!(side_kind(&req("HEAD", "/b/k", false), true), "head");
        assert_eq!(side_kind(&req("HEAD", "/b", false), true), "head_bucket");
        assert_eq!(side_kind(&req("HEAD", "/b/", false), true), "head_bucket");
        assert_eq!(side_kind(&req("GET", "/b/k", true), true), "range_get");
        assert_eq!(side_kind(&req("GET", "/b/k", false), true), "get");
        assert_eq!(side_kind(&req("GET", "/b?list-type=2&prefix=a", false), true), "list");
        assert_eq!(side_kind(&req("GET", "/b/k?uploadId=x", false), true), "list");
        assert_eq!(side_kind(&req("PUT", "/b/k?partNumber=1&uploadId=x", false), true), "put");
        assert_eq!(side_kind(&req("DELETE", "/b/k", false), true), "delete");
        // Virtual-host style: the bucket is in the Host.
        assert_eq!(side_kind(&req("HEAD", "/k", false), false), "head");
        assert_eq!(side_kind(&req("HEAD", "/", false), false), "head_bucket");
        assert_eq!(side_kind(&req("GET", "/?list-type=2", false), false), "list");
    }

    #[test]
    fn only_new_connections_count_and_tls_ones_are_handshakes() {
        let before = |m: &IntCounterVec| m.with_label_values(&["side"]).get();
        let (c0, t0) = (before(&BACKEND_CONNECTIONS), before(&BACKEND_TLS_HANDSHAKES));
        let r0 = BACKEND_REQUESTS.with_label_values(&["head"]).get();
        let r = req("HEAD", "/b/k", false);
        side_request(&r, true, true, true);
        side_request(&r, true, false, false);
        side_request(&r, true, false, true);
        assert_eq!(BACKEND_REQUESTS.with_label_values(&["head"]).get() - r0, 3);
        assert_eq!(before(&BACKEND_CONNECTIONS) - c0, 2);
        assert_eq!(before(&BACKEND_TLS_HANDSHAKES) - t0, 1);
    }
}
