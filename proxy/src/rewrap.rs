//! The key-rotation job behind `/api/v1/rewrap`: re-wraps every object under a prefix to
//! the current master key, one at a time, and reports its progress. The job's progress is
//! held in memory only (restarting the proxy ends it; re-running skips finished objects).

use std::sync::{Arc, Mutex};

use filters::backend::Backend;
use filters::keys::KeyState;
use filters::rotation::{list_keys, rewrap_object, Rewrapped};
use s3cp_format::ChunkCipher;
use serde::Serialize;

#[derive(Clone, Serialize, Default)]
pub struct JobStatus {
    pub state: &'static str,
    pub bucket: String,
    pub prefix: String,
    pub target_key_id: u32,
    pub total: u64,
    pub listed_all: bool,
    pub done: u64,
    pub already_current: u64,
    pub failed: u64,
    pub errors: Vec<String>,
}

pub struct Rewrapper {
    status: Mutex<Option<JobStatus>>,
    /// Chunk cipher of the objects the job re-encrypts (multipart objects, which are rewritten
    /// as one segment); single-segment objects keep theirs, only their header is re-wrapped.
    cipher: ChunkCipher,
}

impl Rewrapper {
    /// A job runner writing re-encrypted objects with `cipher` (`encryption.cipher`).
    pub fn new(cipher: ChunkCipher) -> Self {
        Self { status: Mutex::default(), cipher }
    }

    pub fn status(&self) -> Option<JobStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut JobStatus)) {
        if let Some(s) = self.status.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            f(s);
        }
    }

    /// Starts a job unless one is running.
    pub fn start(self: &Arc<Self>, backend: Arc<Backend>, keys: Arc<KeyState>, bucket: String, prefix: String) -> Result<JobStatus, String> {
        let ring = keys.get().ok_or("no key loaded")?;
        {
            let mut g = self.status.lock().unwrap_or_else(|p| p.into_inner());
            if g.as_ref().is_some_and(|s| s.state == "running") {
                return Err("a rewrap job is already running".into());
            }
            *g = Some(JobStatus { state: "running", bucket: bucket.clone(), prefix: prefix.clone(), target_key_id: ring.current_id(), ..Default::default() });
        }
        let me = self.clone();
        let cipher = self.cipher;
        tokio::spawn(async move {
            let mut token: Option<String> = None;
            loop {
                let (page, next) = match list_keys(&backend, &bucket, &prefix, token.as_deref()).await {
                    Ok(p) => p,
                    Err(e) => {
                        me.update(|s| {
                            s.state = "failed";
                            s.errors.push(format!("listing: {e}"));
                        });
                        return;
                    }
                };
                me.update(|s| {
                    s.total += page.len() as u64;
                    s.listed_all = next.is_none();
                });
                for key in page {
                    match rewrap_object(&backend, &ring, cipher, &bucket, &key).await {
                        Ok(Rewrapped::Done) => me.update(|s| s.done += 1),
                        Ok(Rewrapped::AlreadyCurrent) => me.update(|s| s.already_current += 1),
                        Err(e) => {
                            log::warn!("rewrap of /{bucket}/{key} failed: {} {:?}", e.error, e.format);
                            me.update(|s| {
                                s.failed += 1;
                                if s.errors.len() < 20 {
                                    s.errors.push(format!("{key}: {}", e.format.map_or(e.error.to_string(), |f| f.to_string())));
                                }
                            });
                        }
                    }
                }
                match next {
                    Some(t) => token = Some(t),
                    None => break,
                }
            }
            me.update(|s| s.state = "done");
            log::info!("rewrap of /{bucket}/{prefix}* finished");
        });
        Ok(self.status().unwrap_or_default())
    }
}
