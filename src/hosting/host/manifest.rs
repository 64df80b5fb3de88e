//! A release's manifest: its files by path, with mode, size and blake3
//! hash (or a symlink's target). Written into every remote release; the
//! next upload compares against it to send only what changed.
//!
//! Written one line per file, sorted by path (`["path",mode,size,"hash",
//! null]`), so that the next release's manifest can be made on the host
//! from this one by a `sed` script of the lines that changed, instead of
//! being uploaded whole ([`sed_edit`]). Older releases carry one JSON
//! object; both are read.

use crate::hosting::release;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// One file of a release, as the manifest records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub mode: u32,
    pub size: u64,
    pub hash: String,
    /// For a symlink: where it points (and no content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// A release's files by relative path.
pub type Manifest = BTreeMap<String, FileEntry>;

/// Reads a service directory into a manifest (hashing every file).
pub fn manifest_of(src: &Path) -> std::io::Result<Manifest> {
    let mut m = Manifest::new();
    for rel in release::release_files(src)? {
        let path = src.join(&rel);
        let meta = std::fs::symlink_metadata(&path)?;
        let key = rel.to_string_lossy().into_owned();
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path)?.to_string_lossy().into_owned();
            m.insert(
                key,
                FileEntry {
                    mode: 0o777,
                    size: 0,
                    hash: String::new(),
                    link: Some(target),
                },
            );
        } else {
            let mut h = blake3::Hasher::new();
            h.update_reader(std::fs::File::open(&path)?)?;
            m.insert(
                key,
                FileEntry {
                    mode: meta.permissions().mode() & 0o7777,
                    size: meta.len(),
                    hash: h.finalize().to_hex().to_string(),
                    link: None,
                },
            );
        }
    }
    Ok(m)
}

/// The manifest as the host stores it: one line per file, sorted by path.
pub fn encode(m: &Manifest) -> String {
    let mut out = String::new();
    for (path, e) in m {
        out.push_str(&line(path, e));
        out.push('\n');
    }
    out
}

fn line(path: &str, e: &FileEntry) -> String {
    serde_json::to_string(&(path, e.mode, e.size, &e.hash, &e.link)).unwrap_or_default()
}

/// Reads a stored manifest: lines, or the JSON object older releases have.
pub fn decode(bytes: &[u8]) -> Option<Manifest> {
    if let Ok(object) = serde_json::from_slice(bytes) {
        return Some(object);
    }
    let mut m = Manifest::new();
    for l in std::str::from_utf8(bytes).ok()?.lines() {
        let (path, mode, size, hash, link): (String, u32, u64, String, Option<String>) =
            serde_json::from_str(l).ok()?;
        m.insert(
            path,
            FileEntry {
                mode,
                size,
                hash,
                link,
            },
        );
    }
    Some(m)
}

/// A `sed` script that turns `old` (a stored manifest in lines) into
/// `encode(new)`: each old line is kept, deleted (`Nd`) or replaced by
/// the lines that go there (`Nc\`), so its size follows the change, not
/// the release. `None` when `old` is not in lines or is empty.
pub fn sed_edit(old: &[u8], new: &Manifest) -> Option<String> {
    let old: Vec<&str> = std::str::from_utf8(old).ok()?.lines().collect();
    if old.is_empty() {
        return None;
    }
    // Each line is [path, ...]; anything else (the older JSON object's
    // lines): no edit.
    let old_paths = old
        .iter()
        .map(|l| {
            let v: Vec<serde_json::Value> = serde_json::from_str(l).ok()?;
            Some(v.first()?.as_str()?.to_string())
        })
        .collect::<Option<Vec<String>>>()?;
    let new: Vec<(&String, String)> = new.iter().map(|(p, e)| (p, line(p, e))).collect();
    // What goes where each old line is: None keeps it.
    let mut at: Vec<Option<Vec<String>>> = vec![None; old.len()];
    let (mut i, mut j) = (0, 0);
    let mut pending: Vec<String> = Vec::new();
    while i < old.len() {
        match new.get(j) {
            Some((p, l)) if **p == old_paths[i] => {
                if *l != old[i] || !pending.is_empty() {
                    pending.push(l.clone());
                    at[i] = Some(std::mem::take(&mut pending));
                }
                i += 1;
                j += 1;
            }
            Some((p, l)) if **p < old_paths[i] => {
                pending.push(l.clone());
                j += 1;
            }
            _ => {
                at[i] = Some(std::mem::take(&mut pending));
                i += 1;
            }
        }
    }
    // Every line waiting went with the old line it came before; those
    // after the last old line go with it.
    debug_assert!(pending.is_empty());
    if j < new.len() {
        let last = old.len() - 1;
        let mut lines = at[last]
            .take()
            .unwrap_or_else(|| vec![old[last].to_string()]);
        lines.extend(new[j..].iter().map(|(_, l)| l.clone()));
        at[last] = Some(lines);
    }
    let mut script = String::new();
    for (n, lines) in at.iter().enumerate() {
        match lines {
            None => {}
            Some(l) if l.is_empty() => script.push_str(&format!("{}d\n", n + 1)),
            Some(l) => {
                let text: Vec<String> = l.iter().map(|t| t.replace('\\', "\\\\")).collect();
                script.push_str(&format!("{}c\\\n{}\n", n + 1, text.join("\\\n")));
            }
        }
    }
    Some(script)
}

/// The sha256 of bytes, in hex, as `sha256sum` prints it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(hash: &str) -> FileEntry {
        FileEntry {
            mode: 0o644,
            size: hash.len() as u64,
            hash: hash.into(),
            link: None,
        }
    }

    fn manifest(files: &[(&str, &str)]) -> Manifest {
        files
            .iter()
            .map(|(p, h)| (p.to_string(), entry(h)))
            .collect()
    }

    /// The script through the real `sed` gives exactly the new manifest.
    fn through_sed(old: &Manifest, new: &Manifest) -> usize {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m");
        std::fs::write(&file, encode(old)).unwrap();
        let script = sed_edit(encode(old).as_bytes(), new).unwrap();
        let out = std::process::Command::new("sed")
            .arg("-e")
            .arg(&script)
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            encode(new),
            "{script}"
        );
        assert_eq!(decode(encode(new).as_bytes()).as_ref(), Some(new));
        script.len()
    }

    #[test]
    fn a_sed_script_turns_the_old_manifest_into_the_new_one() {
        let old = manifest(&[("b", "1"), ("d", "2"), ("f", "3"), ("h", "4")]);
        // One file changed: one line of script.
        let one = manifest(&[("b", "1"), ("d", "X"), ("f", "3"), ("h", "4")]);
        assert!(through_sed(&old, &one) < 60);
        // Added before the first, between, after the last; removed first
        // and last; odd names.
        let moved = manifest(&[
            ("a", "0"),
            ("d", "2"),
            ("e \"q\" \\ é", "5"),
            ("f", "3"),
            ("z", "9"),
            ("zz", "10"),
        ]);
        through_sed(&old, &moved);
        through_sed(&old, &manifest(&[("c", "1")]));
        through_sed(
            &old,
            &manifest(&[("b", "1"), ("d", "2"), ("f", "3"), ("h", "4"), ("i", "5")]),
        );
        assert_eq!(sed_edit(encode(&old).as_bytes(), &old).as_deref(), Some(""));
    }

    #[test]
    fn the_json_object_of_older_releases_is_read_and_not_edited() {
        let old = manifest(&[("a", "1")]);
        let json = serde_json::to_vec_pretty(&old).unwrap();
        assert_eq!(decode(&json), Some(old.clone()));
        assert_eq!(sed_edit(&json, &old), None);
    }
}
