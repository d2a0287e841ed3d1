//! The admin listener: health, readiness, metrics, key status and the live dashboard.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use filters::keys::KeyState;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use subtle::ConstantTimeEq;

use crate::metrics::Metrics;
use crate::rewrap::Rewrapper;

pub struct AdminApi {
    pub backend: Arc<filters::backend::Backend>,
    pub rewrap: Arc<Rewrapper>,
    pub keys: Arc<KeyState>,
    pub metrics: Arc<Metrics>,
    pub token: Option<String>,
    /// Clients with the `admin` role open the API with `Bearer <access key>:<secret>`.
    pub clients: Arc<filters::clients::Clients>,
    pub needs_key: bool,
    /// `memkey.ready_requires_keyd_key`: `/readyz` also needs keyd to hold the key.
    pub ready_requires_keyd_key: bool,
    /// Set by the keyd poller: keyd answered its last poll with a key.
    pub keyd_holds_key: Arc<AtomicBool>,
    pub started: SystemTime,
    pub filters: Vec<&'static str>,
    pub memkey_endpoint: Option<String>,
    /// The S3 listener's `allowed_buckets` (empty: every bucket); rewrap obeys it too.
    pub allowed_buckets: Vec<String>,
    pub core_dumps_disabled: bool,
    pub upgrade_sock: String,
    /// A stop in progress takes the replica out of the pool (`/readyz` 503, `draining`).
    pub drain: Arc<crate::drain::Drain>,
    pub pid_file: String,
}

fn respond(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .expect("static response parts are valid")
}

fn json(status: u16, v: serde_json::Value) -> Response<Vec<u8>> {
    respond(status, "application/json", serde_json::to_vec(&v).expect("json"))
}

fn rfc3339(t: SystemTime) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from(t).format(&fmt).unwrap_or_default()
}

impl AdminApi {
    /// An admin token or an admin-role client is configured.
    fn admin_configured(&self) -> bool {
        self.token.is_some() || self.clients.iter().any(|c| c.role == filters::clients::Role::Admin)
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let given = session
            .req_header()
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if let Some(token) = &self.token {
            if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
                return true;
            }
        }
        let Some((key, secret)) = given.split_once(':') else { return false };
        match self.clients.get(key) {
            Some(c) if c.role == filters::clients::Role::Admin => {
                // Every secret is compared, so the time does not tell which one matched.
                c.secrets.iter().fold(false, |ok, s| ok | bool::from(secret.as_bytes().ct_eq(s.secret().as_bytes())))
            }
            _ => false,
        }
    }

    /// The query of an admin request that names a bucket: `bucket=` is required, and the
    /// bucket must be one the S3 listener serves.
    fn bucket_query(&self, session: &ServerSession) -> Result<(String, Vec<(String, String)>), Response<Vec<u8>>> {
        let q = filters::request::parse_query(session.req_header().uri.query().unwrap_or(""));
        let Some(bucket) = q.iter().find(|(k, _)| k == "bucket").map(|(_, v)| v.clone()) else {
            return Err(json(400, serde_json::json!({ "error": "bucket= is required" })));
        };
        if !self.bucket_allowed(&bucket) {
            return Err(json(
                403,
                serde_json::json!({ "error": format!("bucket {bucket:?} is not in the proxy's allowed_buckets"), "code": "AccessDenied", "bucket": bucket }),
            ));
        }
        Ok((bucket, q))
    }

    fn bucket_allowed(&self, bucket: &str) -> bool {
        self.allowed_buckets.is_empty() || self.allowed_buckets.iter().any(|b| b == bucket)
    }

    /// Whether the loaded keys are locked in RAM (`null` without keys), and why not.
    fn memory_lock(&self) -> (Option<bool>, Option<String>) {
        match self.keys.memory_locked() {
            None => (None, None),
            Some(Ok(())) => (Some(true), None),
            Some(Err(why)) => (Some(false), Some(why)),
        }
    }

    /// A refused key delivery (different material under a loaded key id), or `null`.
    fn key_conflict(&self) -> serde_json::Value {
        match self.keys.refused() {
            Some(r) => serde_json::json!({
                "key_ids": r.key_ids,
                "since": rfc3339(r.since),
                "message": "keyd offers different key material under a key id already loaded; refused, the loaded key stays in use. Deliver the original key again, or use a new key id.",
            }),
            None => serde_json::Value::Null,
        }
    }

    fn key_status(&self) -> serde_json::Value {
        let (locked, lock_error) = self.memory_lock();
        let mut v = match self.keys.get() {
            Some(ring) => serde_json::json!({
                "loaded": true,
                "current_key_id": ring.current_id(),
                "key_ids": ring.ids().collect::<Vec<_>>(),
                "loaded_at": self.keys.loaded_at().map(rfc3339),
            }),
            None => serde_json::json!({ "loaded": false, "key_ids": [] }),
        };
        v["memory_locked"] = serde_json::json!(locked);
        v["memory_lock_error"] = serde_json::json!(lock_error);
        v["core_dumps_disabled"] = serde_json::json!(self.core_dumps_disabled);
        v["conflict"] = self.key_conflict();
        v
    }
}

impl AdminApi {
    /// `GET /api/v1/key/verify?bucket=B&key_id=N&kcv=HEX[&prefix=P][&limit=N]`: the key ids and
    /// key-check values of a bucket's objects against a key the admin is about to send.
    async fn key_verify(&self, session: &ServerSession) -> Response<Vec<u8>> {
        let (bucket, q) = match self.bucket_query(session) {
            Ok(v) => v,
            Err(answer) => return answer,
        };
        let get = |n: &str| q.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let Some(key_id) = get("key_id").and_then(|v| v.parse::<u32>().ok()) else {
            return json(400, serde_json::json!({ "error": "key_id= (a number) is required" }));
        };
        let Some(kcv) = get("kcv").and_then(|v| keyd::protocol::decode_hex_array::<8>(&v)) else {
            return json(400, serde_json::json!({ "error": "kcv= (16 hex characters, the key-check value) is required" }));
        };
        let limit = get("limit").and_then(|v| v.parse::<usize>().ok()).unwrap_or(5).clamp(1, crate::key_verify::MAX_LIMIT);
        let prefix = get("prefix").unwrap_or_default();
        match crate::key_verify::survey(&self.backend, &bucket, &prefix, limit, key_id, &kcv).await {
            Ok(report) => json(200, serde_json::to_value(report).expect("json")),
            Err(e) => json(502, serde_json::json!({ "error": e })),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/healthz" => respond(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                let key = !self.needs_key || self.keys.get().is_some();
                let backend = self.metrics.backend_up.get() == 1;
                let keyd = self.keyd_holds_key.load(Ordering::Relaxed);
                let keyd_ok = !(self.needs_key && self.ready_requires_keyd_key) || keyd;
                let draining = self.drain.stopping();
                let status = if key && backend && keyd_ok && !draining { 200 } else { 503 };
                json(
                    status,
                    serde_json::json!({ "ready": status == 200, "key_loaded": key, "backend_up": backend, "keyd_holds_key": keyd, "draining": draining }),
                )
            }
            "/metrics" => respond(200, "text/plain; version=0.0.4", self.metrics.render()),
            "/api/v1/key/status" => {
                if !self.admin_configured() {
                    json(403, serde_json::json!({ "error": "admin.token is not configured (nor a client with the admin role)" }))
                } else if !self.authorized(session) {
                    json(401, serde_json::json!({ "error": "missing or wrong bearer token" }))
                } else {
                    json(200, self.key_status())
                }
            }
            "/api/v1/key/verify" => {
                if !self.authorized(session) {
                    return json(401, serde_json::json!({ "error": "missing or wrong bearer token" }));
                }
                self.key_verify(session).await
            }
            "/api/v1/rewrap" => {
                if !self.authorized(session) {
                    return json(401, serde_json::json!({ "error": "missing or wrong bearer token" }));
                }
                if session.req_header().method == http::Method::POST {
                    let (bucket, q) = match self.bucket_query(session) {
                        Ok(v) => v,
                        Err(answer) => return answer,
                    };
                    let get = |n: &str| q.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
                    match self.rewrap.start(self.backend.clone(), self.keys.clone(), bucket, get("prefix").unwrap_or_default()) {
                        Ok(status) => json(202, serde_json::to_value(status).expect("json")),
                        Err(e) => json(409, serde_json::json!({ "error": e })),
                    }
                } else {
                    match self.rewrap.status() {
                        Some(status) => json(200, serde_json::to_value(status).expect("json")),
                        None => json(404, serde_json::json!({ "error": "no rewrap job has run" })),
                    }
                }
            }
            "/api/v1/key-usage" => {
                if !self.authorized(session) {
                    return json(401, serde_json::json!({ "error": "missing or wrong bearer token" }));
                }
                let (bucket, q) = match self.bucket_query(session) {
                    Ok(v) => v,
                    Err(answer) => return answer,
                };
                let get = |n: &str| q.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
                let wanted = match get("key_id").map(|v| v.parse::<u32>()) {
                    None => None,
                    Some(Ok(id)) => Some(id),
                    Some(Err(_)) => return json(400, serde_json::json!({ "error": "key_id= must be a key id (an integer)" })),
                };
                let start = get("key_marker").map(|key| filters::rotation::VersionMarker { key, version_id: get("version_id_marker").unwrap_or_default() });
                let Some(ring) = self.keys.get() else {
                    return json(503, serde_json::json!({ "error": "no key loaded" }));
                };
                match crate::key_usage::scan(&self.backend, &ring, &bucket, &get("prefix").unwrap_or_default(), wanted, start).await {
                    Ok(v) => json(200, v),
                    Err(e) => json(502, serde_json::json!({ "error": e })),
                }
            }
            "/api/v1/info" => json(
                200,
                serde_json::json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "started": rfc3339(self.started),
                    "filters": self.filters,
                    "encrypting": self.needs_key,
                    "key_loaded": self.keys.get().is_some(),
                    "key_memory_locked": self.memory_lock().0,
                    "key_conflict": self.keys.refused().is_some(),
                    "core_dumps_disabled": self.core_dumps_disabled,
                    "memkey_endpoint": self.memkey_endpoint,
                    "upgrade_sock": self.upgrade_sock,
                    "pid_file": self.pid_file,
                }),
            ),
            "/" => respond(200, "text/html; charset=utf-8", include_bytes!("dashboard.html").to_vec()),
            _ => json(404, serde_json::json!({ "error": "not found" })),
        }
    }
}
