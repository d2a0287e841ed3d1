//! m-of-n key shares on the admin side: `key split` writes one share file per administrator.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use keyd::protocol::fingerprint_hex;
use keyd::shamir::{split, KeyShare};
use zeroize::Zeroizing;

use crate::store::{read_master_key, warn_if_exposed, write_new};
use crate::Fail;

/// Reads and validates a share file.
pub fn read_share(path: &Path) -> Result<KeyShare, Fail> {
    let text = Zeroizing::new(
        fs::read_to_string(path)
            .map_err(|e| Fail::usage(format!("cannot read share file {}: {e}", path.display())))?,
    );
    warn_if_exposed(path);
    KeyShare::from_file_str(&text).map_err(|e| Fail::usage(format!("{}: {e}", path.display())))
}

/// `key split`: N share files in `out_dir` (created 0700), any M of which rebuild the key.
/// With `admins`, share i is labelled for admin i (file name and a comment line).
pub fn key_split(
    input: &Path,
    threshold: u8,
    count: u8,
    out_dir: &Path,
    admins: &[String],
) -> Result<Vec<PathBuf>, Fail> {
    if !admins.is_empty() && admins.len() != usize::from(count) {
        return Err(Fail::usage(format!(
            "--admin was given {} times but --shares is {count}: give one admin public key per share",
            admins.len()
        )));
    }
    let labels: Vec<(String, String)> = admins
        .iter()
        .map(|a| {
            keyd::protocol::verifying_key_from_hex(a)
                .map(|k| (a.trim().to_owned(), fingerprint_hex(&k)))
                .ok_or_else(|| {
                    Fail::usage(format!(
                        "--admin {a:?} is not an admin public key (64 hex, from `memkey-admin identity`)"
                    ))
                })
        })
        .collect::<Result<_, _>>()?;
    let key = read_master_key(input)?;
    let shares = split(&key, threshold, count).map_err(|e| Fail::usage(e.to_string()))?;
    if !out_dir.exists() {
        fs::create_dir_all(out_dir)
            .map_err(|e| Fail::error(format!("cannot create {}: {e}", out_dir.display())))?;
        fs::set_permissions(out_dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Fail::error(format!("cannot chmod {}: {e}", out_dir.display())))?;
    }
    let mut written = Vec::new();
    for (i, share) in shares.iter().enumerate() {
        let (name, comment) = match labels.get(i) {
            Some((public, fp)) => (
                format!("share-{}-of-{count}-{}.key", share.index, &fp[..16]),
                format!("# memkey share for admin {public} (fingerprint {fp})\n"),
            ),
            None => (
                format!("share-{}-of-{count}.key", share.index),
                String::new(),
            ),
        };
        let path = out_dir.join(name);
        let mut text = Zeroizing::new(comment);
        text.push_str(&share.to_file_string());
        write_new(&path, text.as_bytes())?;
        written.push(path);
    }
    Ok(written)
}
