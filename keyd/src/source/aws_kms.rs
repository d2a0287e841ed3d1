//! AWS KMS source: `TrentService.Decrypt` (and `Encrypt` to seal) over HTTPS, JSON signed
//! with SigV4 (service `kms`). The ciphertext blob is authenticated by KMS; the sealed file's
//! key id, KCV and format are bound to it as the encryption context, so an edited file is
//! refused by KMS (InvalidCiphertextException). Works with any endpoint speaking the KMS API
//! (moto's server mode in the tests).

use std::collections::BTreeMap;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4::SigningParams;
use aws_smithy_runtime_api::client::identity::Identity;
use base64::Engine;
use s3cp_format::keys::MasterKey;
use serde::{Deserialize, Serialize};
use ureq::tls::{PemItem, RootCerts, TlsConfig, TlsProvider};
use zeroize::Zeroizing;

use super::config::AwsKmsConfig;
use super::{KeySource, Reason, SealedKeyFile, SourceKind, UnsealError};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const MAX_ANSWER: u64 = 64 * 1024;

pub struct AwsKmsSource {
    cfg: AwsKmsConfig,
    agent: ureq::Agent,
    identity: Identity,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DecryptIn<'a> {
    ciphertext_blob: String,
    encryption_context: BTreeMap<String, String>,
    key_id: &'a str,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DecryptOut {
    plaintext: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct EncryptIn<'a> {
    key_id: &'a str,
    plaintext: &'a str,
    encryption_context: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EncryptOut {
    ciphertext_blob: String,
    key_id: Option<String>,
}

#[derive(Deserialize, Default)]
struct KmsError {
    #[serde(rename = "__type", default)]
    kind: String,
    #[serde(alias = "Message", default)]
    message: String,
}

impl AwsKmsSource {
    pub fn new(cfg: AwsKmsConfig) -> Result<Self, UnsealError> {
        let mut tls = TlsConfig::builder().provider(TlsProvider::Rustls);
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                UnsealError::new(Reason::Config, format!("cannot read key_source.aws_kms.ca_file {}: {e}", ca.display()))
            })?;
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|i| match i {
                    Ok(PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            tls = tls.root_certs(RootCerts::new_with_certs(&certs));
        }
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .tls_config(tls.build())
                .http_status_as_error(false)
                .max_redirects(0)
                .timeout_global(Some(cfg.timeout))
                .user_agent(concat!("memkey-server/", env!("CARGO_PKG_VERSION")))
                .build(),
        );
        let identity = Credentials::new(
            cfg.access_key_id.clone(),
            cfg.secret_access_key.to_string(),
            cfg.session_token.as_ref().map(|t| t.to_string()),
            None,
            "memkey-server",
        )
        .into();
        Ok(Self { cfg, agent, identity })
    }

    /// One signed `TrentService.<action>` call; the answer body on 200, else a classified error.
    fn call(&self, action: &str, body: &[u8]) -> Result<Zeroizing<Vec<u8>>, UnsealError> {
        let url = format!("{}/", self.cfg.endpoint);
        let host = url.split("://").nth(1).and_then(|r| r.split('/').next()).unwrap_or_default().to_owned();
        let target = format!("TrentService.{action}");
        let headers = [
            ("host", host.as_str()),
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", target.as_str()),
        ];
        let signable = SignableRequest::new("POST", &url, headers.iter().copied(), SignableBody::Bytes(body))
            .map_err(|e| UnsealError::new(Reason::Config, format!("cannot sign the KMS request: {e}")))?;
        let params = SigningParams::builder()
            .identity(&self.identity)
            .region(&self.cfg.region)
            .name("kms")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| UnsealError::new(Reason::Config, format!("cannot sign the KMS request: {e}")))?
            .into();
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| UnsealError::new(Reason::Config, format!("cannot sign the KMS request: {e}")))?
            .into_parts();
        let mut req = self.agent.post(&url);
        for (n, v) in headers.iter().filter(|(n, _)| *n != "host") {
            req = req.header(*n, *v);
        }
        let (signed, _) = instructions.into_parts();
        for h in signed {
            req = req.header(h.name(), h.value());
        }
        let mut resp = req.send(body).map_err(|e| {
            UnsealError::new(Reason::Unreachable, format!("cannot reach KMS at {}: {e}", self.cfg.endpoint))
        })?;
        let status = resp.status().as_u16();
        let answer = Zeroizing::new(resp.body_mut().with_config().limit(MAX_ANSWER).read_to_vec().map_err(|e| {
            UnsealError::new(Reason::Unreachable, format!("reading the KMS answer from {}: {e}", self.cfg.endpoint))
        })?);
        if status == 200 {
            return Ok(answer);
        }
        let err: KmsError = serde_json::from_slice(&answer).unwrap_or_default();
        let kind = err.kind.rsplit('#').next().unwrap_or_default().to_owned();
        let reason = classify(status, &kind);
        let message: String = err.message.chars().take(300).collect();
        Err(UnsealError::new(reason, format!("KMS {action} answered HTTP {status} {kind}: {message}")))
    }
}

/// KMS error types to reasons. Throttling and server errors are transient.
fn classify(status: u16, kind: &str) -> Reason {
    match kind {
        "DisabledException" | "KMSInvalidStateException" | "NotFoundException" | "KeyUnavailableException" => {
            Reason::KeyUnavailable
        }
        "InvalidCiphertextException" | "IncorrectKeyException" => Reason::Tampered,
        "AccessDeniedException" | "UnrecognizedClientException" | "InvalidSignatureException" | "ExpiredTokenException"
        | "IncompleteSignature" | "MissingAuthenticationToken" | "InvalidClientTokenId" => Reason::Auth,
        "ThrottlingException" | "LimitExceededException" | "DependencyTimeoutException" | "KMSInternalException" => {
            Reason::Unreachable
        }
        _ if status >= 500 || status == 429 => Reason::Unreachable,
        "ValidationException" | "InvalidKeyUsageException" | "InvalidGrantTokenException" => Reason::Config,
        _ if status == 401 || status == 403 => Reason::Auth,
        _ => Reason::Config,
    }
}

impl KeySource for AwsKmsSource {
    fn kind(&self) -> SourceKind {
        SourceKind::AwsKms
    }

    fn unwrap_key(&self, file: &SealedKeyFile) -> Result<Zeroizing<Vec<u8>>, UnsealError> {
        let key_id = file.param("kms_key_id")?;
        let body = serde_json::to_vec(&DecryptIn {
            ciphertext_blob: file.wrapped.clone(),
            encryption_context: file.encryption_context(),
            key_id,
        })
        .expect("plain struct");
        let answer = self.call("Decrypt", &body).map_err(|mut e| {
            if e.reason == Reason::Tampered {
                e.message.push_str(" (the sealed key file was altered, or it was sealed under another KMS key)");
            }
            e
        })?;
        let out: DecryptOut = serde_json::from_slice(&answer)
            .map_err(|e| UnsealError::new(Reason::Unreachable, format!("malformed KMS Decrypt answer: {e}")))?;
        let b64 = Zeroizing::new(out.plaintext);
        B64.decode(b64.as_bytes())
            .map(Zeroizing::new)
            .map_err(|_| UnsealError::new(Reason::Unreachable, "malformed KMS Decrypt answer: Plaintext is not base64"))
    }

    fn wrap_key(&self, file: &mut SealedKeyFile, key: &MasterKey) -> Result<(), UnsealError> {
        let key_id = file.param("kms_key_id")?.to_owned();
        let plaintext = Zeroizing::new(B64.encode(key.expose()));
        let body = Zeroizing::new(
            serde_json::to_vec(&EncryptIn { key_id: &key_id, plaintext: &plaintext, encryption_context: file.encryption_context() })
                .expect("plain struct"),
        );
        let answer = self.call("Encrypt", &body)?;
        let out: EncryptOut = serde_json::from_slice(&answer)
            .map_err(|e| UnsealError::new(Reason::Unreachable, format!("malformed KMS Encrypt answer: {e}")))?;
        if B64.decode(&out.ciphertext_blob).is_err() {
            return Err(UnsealError::new(Reason::Unreachable, "malformed KMS Encrypt answer: CiphertextBlob is not base64"));
        }
        // Decrypt names the key exactly as Encrypt resolved it (an ARN for an alias).
        if let Some(arn) = out.key_id {
            file.params.insert("kms_key_id".into(), arn);
        }
        file.params.insert("region".into(), self.cfg.region.clone());
        file.wrapped = out.ciphertext_blob;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_classes() {
        assert_eq!(classify(400, "DisabledException"), Reason::KeyUnavailable);
        assert_eq!(classify(400, "InvalidCiphertextException"), Reason::Tampered);
        assert_eq!(classify(400, "AccessDeniedException"), Reason::Auth);
        assert_eq!(classify(400, "ThrottlingException"), Reason::Unreachable);
        assert_eq!(classify(503, ""), Reason::Unreachable);
        assert_eq!(classify(400, "ValidationException"), Reason::Config);
        assert!(!Reason::Auth.retryable() && Reason::Unreachable.retryable());
    }
}
