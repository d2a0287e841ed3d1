//! Certificate checks and the fingerprint PBS pins.

use std::path::Path;

use sha2::{Digest, Sha256};

fn read_certs(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read certificate {}: {e}", path.display()))?;
    let certs: Vec<Vec<u8>> = rustls_pemfile::certs(&mut pem.as_slice())
        .map(|c| c.map(|d| d.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate {} is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// Lowercase, colon-separated SHA-256 of the leaf certificate's DER, as PBS shows it.
pub fn fingerprint_der(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub fn fingerprint_file(path: &Path) -> Result<String, String> {
    Ok(fingerprint_der(&read_certs(path)?[0]))
}

/// Checks that the certificate and key files can be loaded (pingora panics otherwise) and
/// returns the certificate's fingerprint.
pub fn check_pair(cert: &str, key: &str) -> Result<String, String> {
    let fp = fingerprint_file(Path::new(cert))?;
    let pem = std::fs::read(key).map_err(|e| format!("cannot read tls.key_file {key}: {e}"))?;
    match rustls_pemfile::private_key(&mut pem.as_slice()) {
        Ok(Some(_)) => Ok(fp),
        Ok(None) => Err(format!("tls.key_file {key} holds no private key")),
        Err(e) => Err(format!("tls.key_file {key} is not PEM: {e}")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fingerprint_format_is_pbs_style() {
        let fp = super::fingerprint_der(b"abc");
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(fp.starts_with("ba:78:16:bf"));
    }
}
