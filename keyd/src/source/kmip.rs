//! KMIP source: a KMIP 1.x server (PyKMIP in the tests) holds an AES-256 key-encryption key;
//! memkey-server fetches it with `Get` over mutually authenticated TLS 1.2+ and opens the
//! sealed key file locally with AES-256-GCM (the file's binding as additional data), then
//! wipes the key-encryption key. The same model as Ceph RGW's KMIP support; unlike PKCS#11,
//! the key-encryption key is in memkey-server's memory for the moment of the unseal.
//!
//! KMIP messages through NLnet Labs' `kmip-protocol` crate (TTLV, tested against PyKMIP by its
//! authors); TLS through the workspace's rustls with the ring provider.

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kmip_protocol::client::{ClientBuilder, Error as KmipError};
use kmip_protocol::types::common::KeyMaterial;
use kmip_protocol::types::response::ManagedObject;
use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use s3cp_format::keys::MasterKey;
use zeroize::{Zeroize, Zeroizing};

use super::{KeySource, Reason, SealedKeyFile, SourceKind, UnsealError};

pub const MECHANISM: &str = "KMIP-Get+AES-256-GCM";

/// Where the KMIP server is and how memkey-server authenticates to it.
#[derive(Debug, Clone)]
pub struct KmipConfig {
    pub host: String,
    pub port: u16,
    /// Name checked in the server certificate (default: `host`).
    pub server_name: String,
    pub ca_file: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub timeout: Duration,
}

pub struct KmipSource {
    cfg: KmipConfig,
    tls: Arc<rustls::ClientConfig>,
}

fn config_err(m: String) -> UnsealError {
    UnsealError::new(Reason::Config, m)
}

fn load_tls(cfg: &KmipConfig) -> Result<Arc<rustls::ClientConfig>, UnsealError> {
    let read_certs = |p: &Path, what: &str| -> Result<Vec<CertificateDer<'static>>, UnsealError> {
        let certs: Vec<_> = CertificateDer::pem_file_iter(p)
            .map_err(|e| config_err(format!("cannot read key_source.kmip.{what} {}: {e}", p.display())))?
            .collect::<Result<_, _>>()
            .map_err(|e| config_err(format!("key_source.kmip.{what} {}: {e}", p.display())))?;
        if certs.is_empty() {
            return Err(config_err(format!("key_source.kmip.{what} {} holds no certificate", p.display())));
        }
        Ok(certs)
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(&cfg.ca_file, "ca_file")? {
        roots.add(c).map_err(|e| config_err(format!("key_source.kmip.ca_file: {e}")))?;
    }
    let chain = read_certs(&cfg.client_cert, "client_cert")?;
    let key = PrivateKeyDer::from_pem_file(&cfg.client_key)
        .map_err(|e| config_err(format!("cannot read key_source.kmip.client_key {}: {e}", cfg.client_key.display())))?;
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| config_err(format!("KMIP TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| config_err(format!("key_source.kmip.client_cert and client_key: {e}")))?;
    Ok(Arc::new(tls))
}

impl KmipSource {
    pub fn new(cfg: KmipConfig) -> Result<Self, UnsealError> {
        let tls = load_tls(&cfg)?;
        Ok(Self { cfg, tls })
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> UnsealError {
        UnsealError::new(Reason::Unreachable, format!("cannot reach KMIP server {}:{}: {e}", self.cfg.host, self.cfg.port))
    }

    /// `Get` of the AES-256 key-encryption key `uid`.
    fn get_kek(&self, uid: &str) -> Result<Zeroizing<Vec<u8>>, UnsealError> {
        let addr = (self.cfg.host.as_str(), self.cfg.port)
            .to_socket_addrs()
            .map_err(|e| self.unreachable(e))?
            .next()
            .ok_or_else(|| self.unreachable("no address"))?;
        let sock = TcpStream::connect_timeout(&addr, self.cfg.timeout).map_err(|e| self.unreachable(e))?;
        let _ = sock.set_read_timeout(Some(self.cfg.timeout));
        let _ = sock.set_write_timeout(Some(self.cfg.timeout));
        let name = ServerName::try_from(self.cfg.server_name.clone())
            .map_err(|e| config_err(format!("key_source.kmip.server_name {:?}: {e}", self.cfg.server_name)))?;
        let conn = rustls::ClientConnection::new(self.tls.clone(), name).map_err(|e| self.unreachable(e))?;
        let mut stream = rustls::StreamOwned::new(conn, sock);
        // Handshake first, so TLS problems read as such rather than as a KMIP read error.
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).map_err(|e| tls_error(&self.cfg, e))?;
        }
        let client = ClientBuilder::new(stream).build();
        let got = client.get_key(uid).map_err(|e| classify(&self.cfg, uid, e))?;
        let ManagedObject::SymmetricKey(key) = got.cryptographic_object else {
            return Err(UnsealError::new(Reason::KeyUnavailable, format!("KMIP object {uid:?} is not a symmetric key")));
        };
        let mut material = match key.key_block.key_value.key_material {
            KeyMaterial::Bytes(b) => Zeroizing::new(b),
            mut other => {
                other.zeroize_if_bytes();
                return Err(UnsealError::new(Reason::KeyUnavailable, format!("KMIP key {uid:?} is not in raw format")));
            }
        };
        if material.len() != 32 {
            let n = material.len();
            material.zeroize();
            return Err(UnsealError::new(Reason::KeyUnavailable, format!("KMIP key {uid:?} is {n} bytes, expected an AES-256 key")));
        }
        Ok(material)
    }
}

/// Best effort for key material the crate hands back in another shape.
trait ZeroizeIfBytes {
    fn zeroize_if_bytes(&mut self);
}

impl ZeroizeIfBytes for KeyMaterial {
    fn zeroize_if_bytes(&mut self) {
        if let KeyMaterial::Bytes(b) = self {
            b.zeroize();
        }
    }
}

fn tls_error(cfg: &KmipConfig, e: io::Error) -> UnsealError {
    let text = e.to_string();
    let reason = if text.contains("certificate") || text.contains("Certificate") || text.contains("alert") {
        Reason::Auth
    } else {
        Reason::Unreachable
    };
    UnsealError::new(reason, format!("TLS with KMIP server {}:{} failed: {text}", cfg.host, cfg.port))
}

fn classify(cfg: &KmipConfig, uid: &str, e: KmipError) -> UnsealError {
    let where_ = format!("KMIP Get of {uid:?} at {}:{}", cfg.host, cfg.port);
    match e {
        KmipError::ItemNotFound(m) => UnsealError::new(Reason::KeyUnavailable, format!("{where_}: item not found (destroyed or revoked?): {m}")),
        e if e.is_connection_error() => UnsealError::new(Reason::Unreachable, format!("{where_}: {e}")),
        KmipError::ServerError(m) => {
            let lower = m.to_ascii_lowercase();
            let reason = if lower.contains("permission") || lower.contains("not allowed") || lower.contains("denied") {
                Reason::Auth
            } else if lower.contains("not found") || lower.contains("state") {
                Reason::KeyUnavailable
            } else {
                Reason::Unreachable
            };
            UnsealError::new(reason, format!("{where_}: server error: {m}"))
        }
        e => UnsealError::new(Reason::Unreachable, format!("{where_}: {e}")),
    }
}

fn gcm_key(kek: &[u8]) -> Result<LessSafeKey, UnsealError> {
    UnboundKey::new(&AES_256_GCM, kek)
        .map(LessSafeKey::new)
        .map_err(|_| UnsealError::new(Reason::KeyUnavailable, "the KMIP key is not a valid AES-256 key"))
}

impl KeySource for KmipSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Kmip
    }

    fn unwrap_key(&self, file: &SealedKeyFile) -> Result<Zeroizing<Vec<u8>>, UnsealError> {
        let uid = file.param("kmip_uid")?;
        if file.param("mechanism")? != MECHANISM {
            return Err(UnsealError::new(Reason::BadFile, format!("params.mechanism must be {MECHANISM:?}")));
        }
        let iv = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(file.param("iv")?)
                .ok()
                .and_then(|v| <[u8; NONCE_LEN]>::try_from(v).ok())
                .ok_or_else(|| UnsealError::new(Reason::BadFile, "params.iv is not 12 bytes of base64"))?
        };
        let kek = self.get_kek(uid)?;
        let key = gcm_key(&kek)?;
        drop(kek);
        let mut buf = Zeroizing::new(file.wrapped_bytes().unwrap_or_default());
        let n = key
            .open_in_place(Nonce::assume_unique_for_key(iv), Aad::from(file.binding()), &mut buf)
            .map_err(|_| {
                UnsealError::new(
                    Reason::Tampered,
                    format!("key id {}: AES-GCM under KMIP key {uid:?} refuses the sealed key: the sealed key file was altered, or it was sealed with another KMIP key", file.key_id),
                )
            })?
            .len();
        buf.truncate(n);
        Ok(buf)
    }

    fn wrap_key(&self, file: &mut SealedKeyFile, key: &MasterKey) -> Result<(), UnsealError> {
        let uid = file.param("kmip_uid")?.to_owned();
        let mut iv = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut iv);
        {
            use base64::Engine;
            file.params.insert("iv".into(), base64::engine::general_purpose::STANDARD.encode(iv));
        }
        file.params.insert("mechanism".into(), MECHANISM.into());
        let kek = self.get_kek(&uid)?;
        let gcm = gcm_key(&kek)?;
        drop(kek);
        // Room for the tag up front: growing the vector would leave a copy of the key behind.
        let mut buf = Zeroizing::new(Vec::with_capacity(key.expose().len() + AES_256_GCM.tag_len()));
        buf.extend_from_slice(key.expose());
        gcm.seal_in_place_append_tag(Nonce::assume_unique_for_key(iv), Aad::from(file.binding()), &mut *buf)
            .map_err(|_| UnsealError::new(Reason::Config, "AES-GCM sealing failed"))?;
        file.set_wrapped(&buf);
        Ok(())
    }
}
