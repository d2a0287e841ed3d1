//! HTTPS client for memkey-server (blocking, rustls).

use std::path::{Path, PathBuf};
use std::time::Duration;

use keyd::protocol::ErrorBody;
use ureq::tls::{PemItem, RootCerts, TlsConfig, TlsProvider};

use crate::{Fail, EXIT_UNREACHABLE};

/// A server to talk to, with its pinned fingerprint and TLS trust settings.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub fingerprint: [u8; 32],
    pub cacert: Option<PathBuf>,
    pub insecure_tls: bool,
}

/// A decoded answer.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub retry_after: Option<u64>,
}

impl Answer {
    /// The `{"error","code"}` body of a failed request, if it has one.
    pub fn error(&self) -> ErrorBody {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| ErrorBody {
            error: String::from_utf8_lossy(&self.body)
                .chars()
                .take(200)
                .collect(),
            code: String::new(),
            retry_after: None,
        })
    }
}

pub struct Client {
    agent: ureq::Agent,
    base: String,
}

const MAX_ANSWER: u64 = 64 * 1024;

impl Client {
    pub fn new(target: &Target, timeout: Duration) -> Result<Self, Fail> {
        let base = target.url.trim_end_matches('/').to_owned();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(Fail::usage(format!(
                "server URL {base:?} must start with https:// (or http:// in a lab)"
            )));
        }
        let mut tls = TlsConfig::builder().provider(TlsProvider::Rustls);
        if target.insecure_tls {
            tls = tls.disable_verification(true);
        } else if let Some(ca) = &target.cacert {
            tls = tls.root_certs(load_roots(ca)?);
        }
        let config = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(timeout))
            .user_agent(concat!("memkey-admin/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Self {
            agent: ureq::Agent::new_with_config(config),
            base,
        })
    }

    pub fn get(&self, path: &str) -> Result<Answer, Fail> {
        let url = format!("{}{path}", self.base);
        let r = self
            .agent
            .get(&url)
            .header("accept", "application/json")
            .call();
        self.finish(r)
    }

    pub fn post_json(&self, path: &str, body: &[u8]) -> Result<Answer, Fail> {
        let url = format!("{}{path}", self.base);
        let r = self
            .agent
            .post(&url)
            .header("content-type", "application/json")
            .send(body);
        self.finish(r)
    }

    fn finish(
        &self,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Answer, Fail> {
        let mut resp = r.map_err(|e| self.transport_error(e))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse().ok());
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_vec()
            .map_err(|e| self.transport_error(e))?;
        Ok(Answer {
            status,
            body,
            retry_after,
        })
    }

    fn transport_error(&self, e: ureq::Error) -> Fail {
        let text = e.to_string();
        let lower = text.to_ascii_lowercase();
        let hint = if lower.contains("certificate")
            || lower.contains("rustls")
            || lower.contains("tls")
        {
            " (TLS: pass the server certificate or its CA with --cacert FILE, or --insecure-tls for a self-signed lab certificate; the key stays protected by the pinned fingerprint)"
        } else {
            ""
        };
        Fail::new(
            EXIT_UNREACHABLE,
            format!("cannot reach {}: {text}{hint}", self.base),
        )
    }
}

fn load_roots(path: &Path) -> Result<RootCerts, Fail> {
    let pem = std::fs::read(path)
        .map_err(|e| Fail::usage(format!("cannot read --cacert {}: {e}", path.display())))?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(Fail::usage(format!(
            "--cacert {} contains no PEM certificate",
            path.display()
        )));
    }
    Ok(RootCerts::new_with_certs(&certs))
}
