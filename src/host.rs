//! The host a service is deployed to: this machine, or a server reached over
//! SSH. It runs commands (the [`Transport`] trait) and holds the release
//! directories, so the engine asks it to put a release in place, switch
//! `current` and remove old releases without caring where the files are.
//!
//! Transfer to an SSH host is incremental: each release carries a manifest
//! of its files (path, mode, size, blake3 hash); files unchanged since the
//! current release are hard-linked on the server instead of uploaded.

use crate::cmd::{Cmd, CmdOutput, ExecError, LocalTransport, Transport, quote};
use crate::model::TransferStats;
use crate::release::{self, ServiceDirs};
use crate::ssh::SshSession;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// The manifest file written into every remote release.
pub const MANIFEST: &str = ".deployer-manifest.json";

const CMD_TIMEOUT: Duration = Duration::from_secs(120);

/// Where releases live and commands run.
pub enum Host {
    Local(LocalTransport),
    Ssh(Box<SshSession>),
}

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

impl Transport for Host {
    async fn exec(&self, cmd: &Cmd, timeout: Duration) -> Result<CmdOutput, ExecError> {
        match self {
            Host::Local(t) => t.exec(cmd, timeout).await,
            Host::Ssh(s) => s.exec(cmd, timeout).await,
        }
    }
}

impl Host {
    pub fn is_local(&self) -> bool {
        matches!(self, Host::Local(_))
    }

    /// How the host is named in messages: `local` or `user@host:port`.
    pub fn name(&self) -> String {
        match self {
            Host::Local(_) => "local".to_string(),
            Host::Ssh(s) => s.target().display(),
        }
    }

    /// The address services on this host are reached at.
    pub fn address(&self) -> Option<String> {
        match self {
            Host::Local(_) => None,
            Host::Ssh(s) => Some(s.target().host.clone()),
        }
    }

    /// Runs a shell snippet (for file operations on the host).
    async fn sh(&self, script: &str) -> Result<CmdOutput, String> {
        let out = self
            .exec(&Cmd::new("sh").args(["-c", script]), CMD_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        if out.success() {
            Ok(out)
        } else {
            Err(format!(
                "on {}: `{script}` failed: {}",
                self.name(),
                out.tail(3)
            ))
        }
    }

    /// The release `current` points at, if any.
    pub async fn current(&self, dirs: &ServiceDirs) -> Option<String> {
        match self {
            Host::Local(_) => dirs.current(),
            Host::Ssh(_) => {
                let link = quote(&dirs.current_link().to_string_lossy());
                let out = self.sh(&format!("readlink {link} || true")).await.ok()?;
                let id = Path::new(out.stdout.trim())
                    .file_name()?
                    .to_str()?
                    .to_string();
                let dir = quote(&dirs.release(&id).to_string_lossy());
                self.sh(&format!("test -d {dir}")).await.ok()?;
                Some(id)
            }
        }
    }

    /// Points `current` at a release atomically (rename over the old link).
    pub async fn switch_current(&self, dirs: &ServiceDirs, id: &str) -> Result<(), String> {
        match self {
            Host::Local(_) => dirs.switch_current(id).map_err(|e| e.to_string()),
            Host::Ssh(_) => {
                let root = quote(&dirs.root.to_string_lossy());
                let target = quote(&format!("releases/{id}"));
                self.sh(&format!(
                    "cd {root} && test -d {target} && ln -sfn {target} .current.tmp && mv -T .current.tmp current"
                ))
                .await
                .map(|_| ())
            }
        }
    }

    pub async fn remove_release(&self, dirs: &ServiceDirs, id: &str) -> Result<(), String> {
        match self {
            Host::Local(_) => dirs.remove_release(id).map_err(|e| e.to_string()),
            Host::Ssh(_) => self
                .sh(&format!(
                    "rm -rf {}",
                    quote(&dirs.release(id).to_string_lossy())
                ))
                .await
                .map(|_| ()),
        }
    }

    /// Puts a service directory in place as release `id`. Locally a copy;
    /// over SSH an upload of what changed since `previous`.
    pub async fn put_release(
        &self,
        src: &Path,
        dirs: &ServiceDirs,
        id: &str,
        previous: Option<&str>,
    ) -> Result<TransferStats, String> {
        match self {
            Host::Local(_) => release::copy_release(src, dirs, id)
                .map_err(|e| format!("copying {} to release {id}: {e}", src.display())),
            Host::Ssh(s) => self.upload(s, src, dirs, id, previous).await,
        }
    }

    async fn upload(
        &self,
        ssh: &SshSession,
        src: &Path,
        dirs: &ServiceDirs,
        id: &str,
        previous: Option<&str>,
    ) -> Result<TransferStats, String> {
        let manifest = manifest_of(src).map_err(|e| format!("reading {}: {e}", src.display()))?;
        let sftp = ssh.sftp().await.map_err(|e| e.to_string())?;
        let releases = dirs.releases().to_string_lossy().into_owned();
        let old: Manifest = match previous {
            Some(p) => sftp
                .read(format!("{releases}/{p}/{MANIFEST}"))
                .await
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default(),
            None => Manifest::new(),
        };
        let partial = format!(".{id}.partial");
        let mut dirs_needed: Vec<String> = manifest
            .keys()
            .filter_map(|k| {
                Path::new(k)
                    .parent()
                    .map(|p| p.to_string_lossy().into_owned())
            })
            .filter(|p| !p.is_empty())
            .collect();
        dirs_needed.sort();
        dirs_needed.dedup();
        // One round trip: a clean partial directory with every subdirectory.
        let mut script = format!(
            "mkdir -p {r} && cd {r} && rm -rf {p} && mkdir {p} && cd {p}",
            r = quote(&releases),
            p = quote(&partial)
        );
        for chunk in dirs_needed.chunks(200) {
            script.push_str(" && mkdir -p");
            for d in chunk {
                script.push(' ');
                script.push_str(&quote(d));
            }
        }
        self.sh(&script).await?;

        let mut stats = TransferStats::default();
        // Unchanged files: hard links to the previous release, in one command.
        let unchanged: Vec<&String> = manifest
            .iter()
            .filter(|(k, e)| e.link.is_none() && old.get(*k) == Some(e))
            .map(|(k, _)| k)
            .collect();
        // (`old` is empty without a previous release, so is `unchanged`.)
        if let (Some(prev), false) = (previous, unchanged.is_empty()) {
            let mut pairs = Vec::new();
            for k in &unchanged {
                pairs.extend_from_slice(format!("{prev}/{k}").as_bytes());
                pairs.push(0);
                pairs.extend_from_slice(format!("{partial}/{k}").as_bytes());
                pairs.push(0);
            }
            let cmd = Cmd::new("xargs")
                .args(["-0", "-n", "2", "ln", "--"])
                .cwd(&releases);
            let out = ssh
                .run_line(&crate::ssh::remote_line(&cmd), &pairs)
                .await
                .map_err(|e| e.to_string())?;
            if !out.success() {
                return Err(format!(
                    "linking unchanged files on {}: {}",
                    self.name(),
                    out.tail(3)
                ));
            }
            stats.linked_files = unchanged.len() as u64;
        }
        let upload_err =
            |k: &str, e: &dyn std::fmt::Display| format!("uploading {k} to {}: {e}", self.name());
        // Creates (or truncates) a file on the host with content and mode.
        let put = async |dest: String, data: &[u8], mode: u32| -> Result<(), String> {
            use tokio::io::AsyncWriteExt;
            let mut file = sftp.create(dest.clone()).await.map_err(|e| e.to_string())?;
            file.write_all(data).await.map_err(|e| e.to_string())?;
            file.shutdown().await.map_err(|e| e.to_string())?;
            let attrs = russh_sftp::protocol::FileAttributes {
                permissions: Some(mode),
                ..Default::default()
            };
            sftp.set_metadata(dest, attrs)
                .await
                .map_err(|e| e.to_string())
        };
        for (k, e) in &manifest {
            let dest = format!("{releases}/{partial}/{k}");
            stats.files += 1;
            if let Some(target) = &e.link {
                sftp.symlink(dest, target.clone())
                    .await
                    .map_err(|err| upload_err(k, &err))?;
                continue;
            }
            stats.bytes += e.size;
            if unchanged.contains(&k) {
                continue;
            }
            let data = std::fs::read(src.join(k)).map_err(|err| format!("reading {k}: {err}"))?;
            put(dest, &data, e.mode)
                .await
                .map_err(|err| upload_err(k, &err))?;
            stats.uploaded_files += 1;
            stats.uploaded_bytes += e.size;
        }
        let json = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        put(format!("{releases}/{partial}/{MANIFEST}"), &json, 0o644)
            .await
            .map_err(|err| upload_err(MANIFEST, &err))?;
        self.sh(&format!(
            "cd {} && mv -T {} {}",
            quote(&releases),
            quote(&partial),
            quote(id)
        ))
        .await?;
        let _ = sftp.close().await;
        Ok(stats)
    }
}
