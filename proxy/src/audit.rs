//! The audit log: one JSON line per request. Never secrets, never object data.

use std::io::Write;
use std::sync::Mutex;

use serde::Serialize;

#[derive(Serialize)]
pub struct AuditLine<'a> {
    pub time: String,
    pub request_id: &'a str,
    pub client: Option<String>,
    pub access_key: Option<&'a str>,
    pub operation: &'a str,
    pub method: &'a str,
    pub bucket: Option<&'a str>,
    pub key: Option<&'a str>,
    pub status: u16,
    pub error: Option<&'a str>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Body bytes read from the backend (ciphertext), e.g. to see what a Range GET fetched.
    pub backend_bytes_in: u64,
    pub duration_ms: f64,
    pub key_id: Option<u32>,
}

pub struct Audit {
    out: Mutex<Box<dyn Write + Send>>,
}

impl Audit {
    /// `stdout`, or a file path (appended to).
    pub fn open(target: &str) -> Result<Self, String> {
        let out: Box<dyn Write + Send> = if target == "stdout" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(target)
                    .map_err(|e| format!("cannot open audit_log {target:?}: {e}"))?,
            )
        };
        Ok(Self { out: Mutex::new(out) })
    }

    pub fn write(&self, line: &AuditLine<'_>) {
        let Ok(mut json) = serde_json::to_vec(line) else { return };
        json.push(b'\n');
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = out.write_all(&json).and_then(|_| out.flush()) {
            log::warn!("audit log write failed: {e}");
        }
    }
}
