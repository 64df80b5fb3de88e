//! The host-key check: strict against a known_hosts file (or a key pinned
//! in config), recording a new key only when `accept-new` was chosen.

use russh::keys::{HashAlg, PublicKey};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What the host-key check decided, kept so a refused connection can say why.
#[derive(Clone, Debug)]
pub(super) enum Verdict {
    Trusted,
    Learned,
    Changed {
        line: usize,
        expected: String,
        presented: String,
    },
    Unknown {
        presented: String,
    },
    Error(String),
}

pub(super) struct HostKeyCheck {
    pub host: String,
    pub port: u16,
    pub known_hosts: PathBuf,
    pub pinned: Option<String>,
    pub accept_new: bool,
    pub verdict: Arc<Mutex<Option<Verdict>>>,
}

fn fingerprint(key: &PublicKey) -> String {
    format!(
        "{} {}",
        key.algorithm().as_str(),
        key.fingerprint(HashAlg::Sha256)
    )
}

impl HostKeyCheck {
    fn decide(&self, key: &PublicKey) -> Verdict {
        if let Some(pinned) = &self.pinned {
            let parsed = pinned
                .split_whitespace()
                .nth(1)
                .and_then(|b64| russh::keys::parse_public_key_base64(b64).ok());
            return match parsed {
                Some(k) if &k == key => Verdict::Trusted,
                Some(k) => Verdict::Changed {
                    line: 0,
                    expected: fingerprint(&k),
                    presented: fingerprint(key),
                },
                None => Verdict::Error(format!("the pinned host key '{pinned}' cannot be read")),
            };
        }
        let known = match russh::keys::known_hosts::known_host_keys_path(
            &self.host,
            self.port,
            &self.known_hosts,
        ) {
            Ok(k) => k,
            Err(e) => {
                return Verdict::Error(format!("reading {}: {e}", self.known_hosts.display()));
            }
        };
        if known.iter().any(|(_, k)| k == key) {
            return Verdict::Trusted;
        }
        if let Some((line, k)) = known.iter().find(|(_, k)| k.algorithm() == key.algorithm()) {
            return Verdict::Changed {
                line: *line,
                expected: fingerprint(k),
                presented: fingerprint(key),
            };
        }
        if let Some((line, k)) = known.first() {
            // Known under another algorithm only: still a different key.
            return Verdict::Changed {
                line: *line,
                expected: fingerprint(k),
                presented: fingerprint(key),
            };
        }
        if self.accept_new {
            match learn(&self.host, self.port, key, &self.known_hosts) {
                Ok(()) => Verdict::Learned,
                Err(e) => Verdict::Error(format!(
                    "recording the host key in {}: {e}",
                    self.known_hosts.display()
                )),
            }
        } else {
            Verdict::Unknown {
                presented: fingerprint(key),
            }
        }
    }
}

/// Appends a host's key to a known_hosts file in OpenSSH's format.
fn learn(host: &str, port: u16, key: &PublicKey, path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let name = if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    };
    let mut key = key.clone();
    key.set_comment("");
    let line = key.to_openssh().map_err(std::io::Error::other)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let needs_newline = std::fs::read(path).is_ok_and(|b| b.last().is_some_and(|c| *c != b'\n'));
    if needs_newline {
        writeln!(f)?;
    }
    writeln!(f, "{name} {}", line.trim())
}

impl russh::client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let verdict = match key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => self.decide(key),
            // Host certificates need a CA to trust; not supported.
            russh::keys::PublicKeyOrCertificate::Certificate(_) => Verdict::Error(
                "the server offered a host certificate; only plain host keys are supported".into(),
            ),
        };
        let ok = matches!(verdict, Verdict::Trusted | Verdict::Learned);
        *self.verdict.lock().unwrap() = Some(verdict);
        Ok(ok)
    }
}
