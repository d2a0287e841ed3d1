//! Disaster recovery without the proxy: decrypt a raw backend object with a master key file,
//! or encrypt a file into the stored format.
//!
//! Decryption never releases plaintext from an object that fails authentication: the output
//! goes to a temporary file first (unlinked at once when writing to stdout; a hidden file next
//! to `--out` otherwise) and reaches its destination only after the whole object verified.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use s3cp_format::{ChunkCipher, 
    meta, Decryptor, FormatError, KeyRing, MasterKey, ObjectId, SegmentEncryptor,
    DEFAULT_CHUNK_SIZE,
};

use crate::store::read_master_key;
use crate::{Fail, EXIT_TAMPERED, EXIT_USAGE};

const BUF: usize = 1 << 20;

/// Where verified output goes.
enum Sink {
    /// Hidden temp file in the destination directory, renamed over `dest` on success.
    Named {
        tmp: PathBuf,
        dest: PathBuf,
        file: File,
        done: bool,
    },
    /// Unlinked temp file, copied to stdout on success.
    Anonymous { file: File },
}

fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(".{prefix}.{}.{nanos}.tmp", std::process::id())
}

/// An anonymous (unlinked) scratch file with mode 0600 in `$TMPDIR`.
fn anonymous_file(tag: &str) -> Result<File, Fail> {
    let path = std::env::temp_dir().join(unique_name(&format!("memkey-admin-{tag}")));
    let f = create_private(&path).map_err(|e| {
        Fail::error(format!(
            "cannot create a temporary file {}: {e}",
            path.display()
        ))
    })?;
    let _ = fs::remove_file(&path);
    Ok(f)
}

impl Sink {
    fn new(out: Option<&Path>) -> Result<Self, Fail> {
        match out {
            Some(dest) => {
                if dest.exists() {
                    return Err(Fail::usage(format!(
                        "{} already exists; refusing to overwrite it",
                        dest.display()
                    )));
                }
                let dir = dest
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                let name = dest
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let tmp = dir.join(unique_name(&name));
                let file = create_private(&tmp)
                    .map_err(|e| Fail::error(format!("cannot create {}: {e}", tmp.display())))?;
                Ok(Sink::Named {
                    tmp,
                    dest: dest.to_owned(),
                    file,
                    done: false,
                })
            }
            None => Ok(Sink::Anonymous {
                file: anonymous_file("out")?,
            }),
        }
    }

    fn write(&mut self, data: &[u8]) -> Result<(), Fail> {
        let f = match self {
            Sink::Named { file, .. } | Sink::Anonymous { file } => file,
        };
        f.write_all(data)
            .map_err(|e| Fail::error(format!("cannot write the temporary output: {e}")))
    }

    /// Moves the verified output to its destination.
    fn commit(mut self) -> Result<(), Fail> {
        match &mut self {
            Sink::Named {
                tmp,
                dest,
                file,
                done,
            } => {
                file.sync_all()
                    .map_err(|e| Fail::error(format!("cannot write {}: {e}", tmp.display())))?;
                // Hard link then unlink: fails instead of replacing a file created meanwhile.
                fs::hard_link(&*tmp, &*dest)
                    .map_err(|e| Fail::error(format!("cannot create {}: {e}", dest.display())))?;
                let _ = fs::remove_file(&*tmp);
                *done = true;
                Ok(())
            }
            Sink::Anonymous { file } => {
                file.seek(SeekFrom::Start(0))
                    .map_err(|e| Fail::error(e.to_string()))?;
                let stdout = io::stdout();
                let mut lock = stdout.lock();
                io::copy(file, &mut lock)
                    .and_then(|_| lock.flush())
                    .map_err(|e| Fail::error(format!("cannot write to stdout: {e}")))?;
                Ok(())
            }
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Sink::Named {
            tmp, done: false, ..
        } = self
        {
            let _ = fs::remove_file(&*tmp);
        }
    }
}

fn input(path: Option<&Path>) -> Result<Box<dyn Read>, Fail> {
    match path {
        Some(p) => Ok(Box::new(File::open(p).map_err(|e| {
            Fail::usage(format!("cannot open --in {}: {e}", p.display()))
        })?)),
        None => Ok(Box::new(io::stdin())),
    }
}

fn tampered(what: &str, e: FormatError) -> Fail {
    Fail::new(
        EXIT_TAMPERED,
        format!("{what}: {e}; no plaintext was written"),
    )
}

fn load_ring(files: &[PathBuf]) -> Result<KeyRing, Fail> {
    let mut keys: Vec<MasterKey> = Vec::with_capacity(files.len());
    for f in files {
        let k = read_master_key(f)?;
        if keys.iter().any(|e| e.id() == k.id()) {
            return Err(Fail::usage(format!("two key files with key id {}", k.id())));
        }
        keys.push(k);
    }
    KeyRing::new(keys[0].id(), &keys).ok_or_else(|| Fail::usage("no key file given"))
}

pub struct DecryptArgs<'a> {
    pub key_files: &'a [PathBuf],
    pub bucket: &'a str,
    pub key: &'a str,
    pub parts: Option<u32>,
    pub meta: Option<&'a str>,
    pub input: Option<&'a Path>,
    pub out: Option<&'a Path>,
}

/// `object decrypt`.
pub fn decrypt(a: DecryptArgs<'_>) -> Result<(), Fail> {
    let ring = load_ring(a.key_files)?;
    let obj = ObjectId {
        bucket: a.bucket,
        key: a.key,
    };
    if let Some(value) = a.meta {
        let opened = meta::open(&ring, obj, value).map_err(|e| tampered("x-amz-meta-s3cp", e))?;
        eprintln!(
            "metadata verified: key id {}, chunk size {}, payload {}",
            opened.key_id,
            opened.chunk_size,
            String::from_utf8_lossy(&opened.payload)
        );
    }
    let mut sink = Sink::new(a.out)?;
    let mut src = input(a.input)?;
    let mut dec = Decryptor::new(ring, obj);
    let mut buf = vec![0u8; BUF];
    let mut total: u64 = 0;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Fail::error(format!("cannot read the object: {e}"))),
        };
        let plain = dec.update(&buf[..n]).map_err(|e| tampered("object", e))?;
        total += plain.len() as u64;
        sink.write(&plain)?;
    }
    let key_id = dec.key_id();
    let segments = dec.segments();
    let rest = match a.parts {
        Some(n) => dec.finish_expecting_segments(n),
        None => dec.finish(),
    }
    .map_err(|e| tampered("object", e))?;
    total += rest.len() as u64;
    sink.write(&rest)?;
    sink.commit()?;
    eprintln!(
        "decrypted and verified {total} bytes (key id {}, {segments} segment{}){}",
        key_id.map(|k| k.to_string()).unwrap_or_else(|| "-".into()),
        if segments == 1 { "" } else { "s" },
        if a.parts.is_none() && segments > 1 {
            "; pass --parts N (from the ETag suffix -N) to also detect dropped trailing parts"
        } else {
            ""
        }
    );
    Ok(())
}

pub struct EncryptArgs<'a> {
    pub key_file: &'a Path,
    pub bucket: &'a str,
    pub key: &'a str,
    pub chunk_size: Option<u32>,
    pub content_type: Option<&'a str>,
    pub input: Option<&'a Path>,
    pub out: Option<&'a Path>,
}

/// `object encrypt`: one single-part segment, plus the sealed metadata header value.
pub fn encrypt(a: EncryptArgs<'_>) -> Result<(), Fail> {
    let master = read_master_key(a.key_file)?;
    let ring = KeyRing::single(&master);
    let keys = ring.current().clone();
    let obj = ObjectId {
        bucket: a.bucket,
        key: a.key,
    };
    let chunk_size = a.chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE);
    s3cp_format::validate_chunk_size(chunk_size)
        .map_err(|e| Fail::new(EXIT_USAGE, e.to_string()))?;

    // The format needs the length up front: a file's size, or stdin spooled to a scratch file.
    let (mut src, len): (Box<dyn Read>, u64) = match a.input {
        Some(p) => {
            let f = File::open(p)
                .map_err(|e| Fail::usage(format!("cannot open --in {}: {e}", p.display())))?;
            let len = f.metadata().map_err(|e| Fail::error(e.to_string()))?.len();
            (Box::new(f), len)
        }
        None => {
            let mut f = anonymous_file("in")?;
            io::copy(&mut io::stdin().lock(), &mut f)
                .map_err(|e| Fail::error(format!("cannot read stdin: {e}")))?;
            let len = f
                .stream_position()
                .map_err(|e| Fail::error(e.to_string()))?;
            f.seek(SeekFrom::Start(0))
                .map_err(|e| Fail::error(e.to_string()))?;
            (Box::new(f), len)
        }
    };
    let mut headers = Vec::new();
    if let Some(ct) = a.content_type {
        headers.push(("content-type".to_owned(), ct.to_owned()));
    }
    // The plaintext length is sealed as the proxy seals it, so that a HEAD through the proxy
    // checks the stored object without reading it (docs/object-format.md section 8, `l`).
    let payload = serde_json::to_vec(&serde_json::json!({ "h": headers, "l": len }))
        .map_err(|e| Fail::error(e.to_string()))?;
    let sealed_meta =
        meta::seal(&keys, obj, chunk_size, &payload).map_err(|e| Fail::error(e.to_string()))?;

    // The chunk cipher the proxy's `auto` setting picks on this machine (readers take both).
    let mut enc = SegmentEncryptor::new(ChunkCipher::auto(), &keys, obj, 0, len, chunk_size)
        .map_err(|e| Fail::usage(e.to_string()))?;
    let mut sink: Box<dyn Write> = match a.out {
        Some(p) => Box::new(
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(p)
                .map_err(|e| Fail::usage(format!("cannot create --out {}: {e}", p.display())))?,
        ),
        None => Box::new(io::stdout().lock()),
    };
    let mut buf = vec![0u8; BUF];
    let result = (|| -> Result<(), Fail> {
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Fail::error(format!("cannot read the input: {e}"))),
            };
            let c = enc
                .update(&buf[..n])
                .map_err(|e| Fail::error(format!("input changed while encrypting: {e}")))?;
            sink.write_all(&c)
                .map_err(|e| Fail::error(format!("cannot write: {e}")))?;
        }
        let c = enc
            .finish()
            .map_err(|e| Fail::error(format!("input changed while encrypting: {e}")))?;
        sink.write_all(&c)
            .and_then(|_| sink.flush())
            .map_err(|e| Fail::error(format!("cannot write: {e}")))
    })();
    if let Err(e) = result {
        drop(sink);
        if let Some(p) = a.out {
            let _ = fs::remove_file(p);
        }
        return Err(e);
    }
    eprintln!(
        "encrypted {len} bytes with key id {} for s3://{}/{}",
        master.id(),
        a.bucket,
        a.key
    );
    eprintln!("upload it with this user metadata header (e.g. aws s3api put-object --metadata s3cp=VALUE):");
    eprintln!("{}: {sealed_meta}", meta::HEADER);
    Ok(())
}
