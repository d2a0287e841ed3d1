//! `memkey-admin key seal` and `memkey-admin hsm init-key`: sealed key files for
//! memkey-server's PKCS#11 and AWS KMS key sources (docs/key-protocol.md, "Sealed key file").

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use keyd::source::config::{AwsKmsConfig, Pin, Pkcs11Config};
use keyd::source::kmip::{KmipConfig, KmipSource};
use keyd::source::{self, aws_kms, pkcs11, KeySource, SealedKeyFile};
use s3cp_format::keys::MasterKey;
use zeroize::Zeroizing;

use crate::store::{read_master_key, write_new};
use crate::Fail;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceArg {
    Pkcs11,
    AwsKms,
    Kmip,
}

/// PKCS#11 token settings (the PIN comes from --pin-file or MEMKEY_PKCS11_PIN, never argv).
#[derive(Args, Debug, Clone)]
pub struct HsmArgs {
    /// PKCS#11 module (shared library) of the HSM.
    /// Example: --module /usr/lib/softhsm/libsofthsm2.so
    #[arg(long, value_name = "PATH", env = "MEMKEY_PKCS11_MODULE", verbatim_doc_comment)]
    pub module: Option<PathBuf>,
    /// Label of the token (slot) holding the wrapping key.
    /// Example: --token-label s3cp
    #[arg(long, value_name = "LABEL", env = "MEMKEY_PKCS11_TOKEN_LABEL", verbatim_doc_comment)]
    pub token_label: Option<String>,
    /// File holding the token's user PIN (or set MEMKEY_PKCS11_PIN).
    /// Example: --pin-file /root/hsm.pin
    #[arg(long, value_name = "FILE", env = "MEMKEY_PKCS11_PIN_FILE", verbatim_doc_comment)]
    pub pin_file: Option<PathBuf>,
}

impl HsmArgs {
    fn config(&self) -> Result<Pkcs11Config, Fail> {
        let module = self.module.clone().ok_or_else(|| Fail::usage("--module (or MEMKEY_PKCS11_MODULE) is needed"))?;
        let token_label =
            self.token_label.clone().ok_or_else(|| Fail::usage("--token-label (or MEMKEY_PKCS11_TOKEN_LABEL) is needed"))?;
        let pin = match (std::env::var("MEMKEY_PKCS11_PIN").ok().filter(|p| !p.is_empty()), &self.pin_file) {
            (Some(p), _) => Pin::Value(Zeroizing::new(p)),
            (None, Some(f)) => Pin::File(f.clone()),
            (None, None) => return Err(Fail::usage("the HSM PIN is needed: --pin-file FILE or MEMKEY_PKCS11_PIN")),
        };
        Ok(Pkcs11Config { module, token_label, pin })
    }
}

/// AWS KMS settings (credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN).
#[derive(Args, Debug, Clone)]
pub struct KmsArgs {
    /// KMS region.
    /// Example: --region eu-west-1
    #[arg(long, value_name = "REGION", env = "AWS_REGION", verbatim_doc_comment)]
    pub region: Option<String>,
    /// KMS endpoint (default https://kms.<region>.amazonaws.com).
    /// Example: --endpoint http://127.0.0.1:5000
    #[arg(long, value_name = "URL", env = "MEMKEY_KMS_ENDPOINT", verbatim_doc_comment)]
    pub endpoint: Option<String>,
    /// CA certificates (PEM) to trust for the endpoint.
    /// Example: --ca-file /etc/ssl/certs/ca-certificates.crt
    #[arg(long, value_name = "FILE", env = "MEMKEY_KMS_CA_FILE", verbatim_doc_comment)]
    pub ca_file: Option<PathBuf>,
}

impl KmsArgs {
    fn config(&self) -> Result<AwsKmsConfig, Fail> {
        let region = self.region.clone().ok_or_else(|| Fail::usage("--region (or AWS_REGION) is needed"))?;
        let env = |n: &str| std::env::var(n).ok().filter(|v| !v.trim().is_empty());
        let access_key_id = env("AWS_ACCESS_KEY_ID").ok_or_else(|| Fail::usage("AWS_ACCESS_KEY_ID is not set"))?;
        let secret = env("AWS_SECRET_ACCESS_KEY").ok_or_else(|| Fail::usage("AWS_SECRET_ACCESS_KEY is not set"))?;
        Ok(AwsKmsConfig {
            endpoint: self
                .endpoint
                .clone()
                .unwrap_or_else(|| format!("https://kms.{region}.amazonaws.com"))
                .trim_end_matches('/')
                .to_owned(),
            region,
            ca_file: self.ca_file.clone(),
            access_key_id,
            secret_access_key: Zeroizing::new(secret),
            session_token: env("AWS_SESSION_TOKEN").map(Zeroizing::new),
            timeout: Duration::from_secs(30),
        })
    }
}

/// KMIP server settings (mutual TLS).
#[derive(Args, Debug, Clone)]
pub struct KmipArgs {
    /// KMIP server host and port.
    /// Example: --kmip-server kmip.example.net:5696
    #[arg(long, value_name = "HOST:PORT", verbatim_doc_comment)]
    pub kmip_server: Option<String>,
    /// CA certificate (PEM) of the KMIP server.
    /// Example: --kmip-ca-file kmip-ca.crt
    #[arg(long, value_name = "FILE", verbatim_doc_comment)]
    pub kmip_ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) to authenticate to the KMIP server.
    /// Example: --kmip-client-cert client.crt --kmip-client-key client.key
    #[arg(long, value_name = "FILE", verbatim_doc_comment)]
    pub kmip_client_cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    pub kmip_client_key: Option<PathBuf>,
}

impl KmipArgs {
    fn config(&self) -> Result<KmipConfig, Fail> {
        let server = self.kmip_server.clone().ok_or_else(|| Fail::usage("--kmip-server HOST:PORT is needed"))?;
        let (host, port) = match server.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| Fail::usage(format!("--kmip-server {server:?}: bad port")))?),
            None => (server.clone(), 5696),
        };
        let need = |v: &Option<PathBuf>, flag: &str| v.clone().ok_or_else(|| Fail::usage(format!("{flag} is needed with --source kmip")));
        Ok(KmipConfig {
            server_name: host.clone(),
            host,
            port,
            ca_file: need(&self.kmip_ca_file, "--kmip-ca-file")?,
            client_cert: need(&self.kmip_client_cert, "--kmip-client-cert")?,
            client_key: need(&self.kmip_client_key, "--kmip-client-key")?,
            timeout: Duration::from_secs(30),
        })
    }
}

#[derive(Args, Debug)]
pub struct SealArgs {
    /// Who wraps the key: an HSM over PKCS#11, or AWS KMS.
    /// Example: --source pkcs11
    #[arg(long, value_enum, verbatim_doc_comment)]
    pub source: SourceArg,
    /// A master key file (`s3cp-master-key v1 ...`), or a sealed key file of the same source
    /// to re-seal under another HSM key or KMS key (it is unsealed first).
    /// Example: --in master.key
    #[arg(long = "in", value_name = "FILE", verbatim_doc_comment)]
    pub input: PathBuf,
    /// Where to write the sealed key file (never overwritten).
    /// Example: --out /etc/s3-crypt-proxy/master-1.sealed.json
    #[arg(long, value_name = "FILE", verbatim_doc_comment)]
    pub out: PathBuf,
    /// Label of the HSM's AES wrapping key (pkcs11).
    /// Example: --key-label s3cp-wrap
    #[arg(long, value_name = "LABEL", verbatim_doc_comment)]
    pub key_label: Option<String>,
    /// KMS key id, ARN or alias (aws-kms).
    /// Example: --kms-key-id alias/s3cp-master
    #[arg(long, value_name = "ID", verbatim_doc_comment)]
    pub kms_key_id: Option<String>,
    /// Unique identifier of the KMIP server's AES-256 key-encryption key (kmip).
    /// Example: --kmip-uid 1
    #[arg(long, value_name = "UID", verbatim_doc_comment)]
    pub kmip_uid: Option<String>,
    #[command(flatten)]
    pub hsm: HsmArgs,
    #[command(flatten)]
    pub kms: KmsArgs,
    #[command(flatten)]
    pub kmip: KmipArgs,
}

fn failed(e: source::UnsealError) -> Fail {
    Fail::error(e.to_string())
}

/// `memkey-admin key seal`.
pub fn seal(a: SealArgs) -> Result<(), Fail> {
    let (src, params): (Box<dyn KeySource>, Vec<(String, String)>) = match a.source {
        SourceArg::Pkcs11 => {
            let label = a.key_label.clone().ok_or_else(|| Fail::usage("--key-label is needed with --source pkcs11"))?;
            (Box::new(pkcs11::Pkcs11Source::new(a.hsm.config()?)), vec![("key_label".into(), label)])
        }
        SourceArg::AwsKms => {
            let id = a.kms_key_id.clone().ok_or_else(|| Fail::usage("--kms-key-id is needed with --source aws-kms"))?;
            (Box::new(aws_kms::AwsKmsSource::new(a.kms.config()?).map_err(failed)?), vec![("kms_key_id".into(), id)])
        }
        SourceArg::Kmip => {
            let uid = a.kmip_uid.clone().ok_or_else(|| Fail::usage("--kmip-uid is needed with --source kmip"))?;
            (Box::new(KmipSource::new(a.kmip.config()?).map_err(failed)?), vec![("kmip_uid".into(), uid)])
        }
    };
    let key = read_key_or_sealed(&a.input, &*src)?;
    let file = source::seal(&*src, &key, params).map_err(failed)?;
    write_new(&a.out, file.to_json().as_bytes())?;
    println!(
        "Wrote sealed key file {} for key id {} ({}, KCV {}). It holds no usable secret without the {}.",
        a.out.display(),
        key.id(),
        file.source,
        file.kcv,
        match a.source {
            SourceArg::Pkcs11 => "HSM and its PIN",
            SourceArg::AwsKms => "KMS key and credentials allowed to decrypt with it",
            SourceArg::Kmip => "KMIP server's key and a client certificate it accepts",
        }
    );
    Ok(())
}

fn read_key_or_sealed(path: &Path, src: &dyn KeySource) -> Result<MasterKey, Fail> {
    let text = std::fs::read(path).map_err(|e| Fail::usage(format!("cannot read --in {}: {e}", path.display())))?;
    if text.trim_ascii_start().starts_with(b"{") {
        let old = SealedKeyFile::parse(&text).map_err(failed)?;
        return source::unseal(src, &old).map_err(failed);
    }
    read_master_key(path)
}

#[derive(Args, Debug)]
pub struct InitKeyArgs {
    /// Label of the new AES-256 wrapping key (non-extractable, encrypt/decrypt only).
    /// Example: --key-label s3cp-wrap
    #[arg(long, value_name = "LABEL", verbatim_doc_comment)]
    pub key_label: String,
    #[command(flatten)]
    pub hsm: HsmArgs,
}

/// `memkey-admin hsm init-key`.
pub fn init_key(a: InitKeyArgs) -> Result<(), Fail> {
    let cfg = a.hsm.config()?;
    pkcs11::generate_wrapping_key(&cfg, &a.key_label).map_err(failed)?;
    println!(
        "Created a non-extractable AES-256 key {:?} on token {:?}; seal master keys with `memkey-admin key seal --source pkcs11 --key-label {}`.",
        a.key_label, cfg.token_label, a.key_label
    );
    Ok(())
}
