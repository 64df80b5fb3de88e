//! The host a service is deployed to: this machine, or a server reached over
//! SSH. It runs commands (the [`Transport`] trait) and holds the release
//! directories, so the engine asks it to put a release in place, switch
//! `current` and remove old releases without caring where the files are.
//!
//! Transfer to an SSH host is incremental: each release carries a manifest
//! of its files (path, mode, size, blake3 hash); files unchanged since the
//! current release are hard-linked on the server instead of uploaded.

use crate::cmd::{Cmd, CmdOutput, ExecError, LocalTransport, Transport, quote};
use crate::lock::Holder;
use crate::model::TransferStats;
use crate::release::{self, ServiceDirs};
use crate::ssh::SshSession;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// Why the lock on a host was not taken.
#[derive(Debug)]
pub enum RemoteLockError {
    /// Another deployer holds it (who).
    Busy(String),
    Failed(String),
}

/// A remote lock not refreshed for this long belongs to a dead deployer.
pub const REMOTE_LOCK_STALE_SECS: u64 = 90;

/// The manifest file written into every remote release.
pub const MANIFEST: &str = ".deployer-manifest.json";

const CMD_TIMEOUT: Duration = Duration::from_secs(120);

/// Told how far an upload is: bytes sent, bytes to send.
pub type Progress<'a> = dyn Fn(u64, u64) + Sync + 'a;

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

    /// Runs a command; the error says why it could not run at all.
    pub async fn run(&self, cmd: &Cmd, timeout: Duration) -> Result<CmdOutput, String> {
        self.exec(cmd, timeout).await.map_err(|e| e.to_string())
    }

    /// Runs a command that must succeed; the error names the command and
    /// carries the end of its output.
    pub async fn run_ok(&self, cmd: &Cmd, timeout: Duration) -> Result<CmdOutput, String> {
        let out = self.run(cmd, timeout).await?;
        if out.success() {
            Ok(out)
        } else {
            Err(format!("`{}` failed:\n{}", cmd.display(), out.tail(8)))
        }
    }

    /// Bytes free for unprivileged writes on the filesystem holding `path`.
    pub async fn free_bytes(&self, path: &str) -> Option<u64> {
        let script = format!("df -Pk {} | tail -n 1", quote(path));
        let out = self.sh(&script).await.ok()?;
        let kib: u64 = out.stdout.split_whitespace().nth(3)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// Refuses a transfer that cannot fit: the release, plus a margin for
    /// what else the filesystem needs.
    async fn check_space(&self, path: &str, need: u64) -> Result<(), String> {
        const MARGIN: u64 = 1 << 20;
        match self.free_bytes(path).await {
            Some(free) if free < need + MARGIN => Err(format!(
                "not enough disk space on {} at {path}: the release needs {}, {} is free",
                self.name(),
                human_bytes(need + MARGIN),
                human_bytes(free)
            )),
            _ => Ok(()),
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

    /// Takes the deploy lock on an SSH host, so deployers on different
    /// machines never interleave: `mkdir` of `deploy.lock.d` is atomic, and
    /// `holder.json` in it names the holder. The holder touches it while it
    /// works ([`Host::heartbeat`]); a lock not touched for
    /// [`REMOTE_LOCK_STALE_SECS`] belongs to a deployer that died, and is
    /// taken over. Returns the stale holder taken over, if any. On this
    /// machine the local flock already covers this, so it does nothing.
    pub async fn lock(
        &self,
        dirs: &ServiceDirs,
        holder: &Holder,
        holder_is_dead: impl Fn(&Holder) -> bool,
    ) -> Result<Option<String>, RemoteLockError> {
        let Host::Ssh(s) = self else { return Ok(None) };
        let d = quote(&dirs.root.join("deploy.lock.d").to_string_lossy());
        let script = format!(
            "mkdir -p {root} || exit 4\n\
             if mkdir {d} 2>/dev/null; then cat > {d}/holder.json; echo acquired; exit 0; fi\n\
             age=$(( $(date +%s) - $(stat -c %Y {d}/holder.json 2>/dev/null || echo 0) ))\n\
             if [ \"$age\" -gt {stale} ]; then old=$(cat {d}/holder.json 2>/dev/null); rm -rf {d}; \
               if mkdir {d} 2>/dev/null; then cat > {d}/holder.json; echo \"stale $old\"; exit 0; fi; fi\n\
             cat {d}/holder.json 2>/dev/null; exit 3\n",
            root = quote(&dirs.root.to_string_lossy()),
            stale = REMOTE_LOCK_STALE_SECS,
        );
        let cmd = Cmd::new("sh").args(["-c", &script]);
        let out = s
            .run_line(
                &crate::ssh::remote_line(&cmd),
                serde_json::to_string(holder).unwrap_or_default().as_bytes(),
            )
            .await
            .map_err(|e| RemoteLockError::Failed(e.to_string()))?;
        match out.code {
            Some(0) => Ok(out.stdout.trim().strip_prefix("stale ").map(str::to_string)),
            Some(3) => match serde_json::from_str::<Holder>(out.stdout.trim()) {
                // A deployer on this machine that has exited (its connection
                // broke before it could unlock): no need to wait it out.
                Ok(h) if holder_is_dead(&h) => {
                    let force = format!("rm -rf {d} && mkdir {d} && cat > {d}/holder.json");
                    let cmd = Cmd::new("sh").args(["-c", &force]);
                    let body = serde_json::to_string(holder).unwrap_or_default();
                    let out = s
                        .run_line(&crate::ssh::remote_line(&cmd), body.as_bytes())
                        .await
                        .map_err(|e| RemoteLockError::Failed(e.to_string()))?;
                    if out.success() {
                        Ok(Some(format!("{h} (its process has exited)")))
                    } else {
                        Err(RemoteLockError::Failed(out.tail(3)))
                    }
                }
                Ok(h) => Err(RemoteLockError::Busy(h.to_string())),
                Err(_) => Err(RemoteLockError::Busy("holder unknown".to_string())),
            },
            _ => Err(RemoteLockError::Failed(format!(
                "taking the lock on {}: {}",
                self.name(),
                out.tail(3)
            ))),
        }
    }

    /// Keeps a held remote lock fresh.
    pub async fn heartbeat(&self, dirs: &ServiceDirs) {
        if !self.is_local() {
            let f = dirs.root.join("deploy.lock.d/holder.json");
            let _ = self
                .sh(&format!("touch {}", quote(&f.to_string_lossy())))
                .await;
        }
    }

    pub async fn unlock(&self, dirs: &ServiceDirs) {
        if !self.is_local() {
            let d = dirs.root.join("deploy.lock.d");
            let _ = self
                .sh(&format!("rm -rf {}", quote(&d.to_string_lossy())))
                .await;
        }
    }

    /// Appends a line to the service's audit log on an SSH host
    /// (`ROOT/audit.log`), so the host itself records who deployed what.
    pub async fn audit(&self, dirs: &ServiceDirs, line: &str) -> Result<(), String> {
        let Host::Ssh(s) = self else { return Ok(()) };
        let log = dirs.root.join("audit.log");
        let cmd = Cmd::new("sh").args(["-c", &format!("cat >> {}", quote(&log.to_string_lossy()))]);
        let out = s
            .run_line(
                &crate::ssh::remote_line(&cmd),
                format!("{line}\n").as_bytes(),
            )
            .await
            .map_err(|e| e.to_string())?;
        if out.success() {
            Ok(())
        } else {
            Err(format!(
                "writing the audit log on {}: {}",
                self.name(),
                out.tail(2)
            ))
        }
    }

    /// Writes a file on the host with a mode (parent directories made as
    /// needed). Written beside the target and renamed into place.
    pub async fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<(), String> {
        let parent = Path::new(path)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into());
        let tmp = format!("{path}.deployer-tmp");
        match self {
            Host::Local(_) => {
                let write = || -> std::io::Result<()> {
                    std::fs::create_dir_all(&parent)?;
                    let mut opts = std::fs::OpenOptions::new();
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.write(true).create(true).truncate(true).mode(mode);
                    std::io::Write::write_all(&mut opts.open(&tmp)?, data)?;
                    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
                    std::fs::rename(&tmp, path)
                };
                write().map_err(|e| format!("writing {path}: {e}"))
            }
            Host::Ssh(s) => {
                self.sh(&format!("mkdir -p {}", quote(&parent))).await?;
                let sftp = s.sftp().await.map_err(|e| e.to_string())?;
                sftp_put(&sftp, &tmp, data, mode, &|_| {})
                    .await
                    .map_err(|e| format!("writing {path} on {}: {e}", self.name()))?;
                let _ = sftp.close().await;
                // SFTP's rename will not replace an existing file; mv will.
                self.sh(&format!("mv -f {} {}", quote(&tmp), quote(path)))
                    .await
                    .map(|_| ())
            }
        }
    }

    /// Whether release `id`'s directory is there.
    pub async fn has_release(&self, dirs: &ServiceDirs, id: &str) -> bool {
        let dir = dirs.release(id);
        let cmd = Cmd::new("test").args(["-d", &dir.to_string_lossy()]);
        self.exec(&cmd, Duration::from_secs(30))
            .await
            .is_ok_and(|o| o.success())
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
        progress: &Progress<'_>,
    ) -> Result<TransferStats, String> {
        match self {
            Host::Local(_) => {
                let mut need = 0;
                for f in release::release_files(src).map_err(|e| e.to_string())? {
                    need += std::fs::symlink_metadata(src.join(f))
                        .map(|m| m.len())
                        .unwrap_or(0);
                }
                let releases = dirs.releases();
                let existing = releases
                    .ancestors()
                    .find(|p| p.exists())
                    .unwrap_or(Path::new("/"))
                    .to_string_lossy()
                    .into_owned();
                self.check_space(&existing, need).await?;
                release::copy_release(src, dirs, id)
                    .map_err(|e| format!("copying {} to release {id}: {e}", src.display()))
            }
            Host::Ssh(s) => {
                let result = self.upload(s, src, dirs, id, previous, progress).await;
                if result.is_err() {
                    // A broken-off upload leaves no partial copy behind when
                    // the host still answers.
                    let partial = dirs.releases().join(format!(".{id}.partial"));
                    let _ = self
                        .sh(&format!("rm -rf {}", quote(&partial.to_string_lossy())))
                        .await;
                }
                result
            }
        }
    }

    async fn upload(
        &self,
        ssh: &SshSession,
        src: &Path,
        dirs: &ServiceDirs,
        id: &str,
        previous: Option<&str>,
        progress: &Progress<'_>,
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
        // Partial copies left by an upload that broke off go first.
        let mut script = format!(
            "mkdir -p {r} && cd {r} && find . -maxdepth 1 -name '.*.partial' -exec rm -rf {{}} + && mkdir {p} && cd {p}",
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
        // Unchanged files: the previous release hard-linked whole (one
        // `cp -al`), then every link that must not stay is removed (one
        // `rm`): changed files, files that are gone, symlinks and the old
        // manifest. A changed file is never written through a link, so the
        // previous release stays intact.
        if let (Some(prev), false) = (previous, unchanged.is_empty()) {
            let mut doomed = Vec::new();
            for (k, e) in &old {
                if e.link.is_some() || manifest.get(k) != Some(e) {
                    doomed.extend_from_slice(k.as_bytes());
                    doomed.push(0);
                }
            }
            doomed.extend_from_slice(MANIFEST.as_bytes());
            doomed.push(0);
            let script = format!(
                "cd {r} && cp -al {prev}/. {p}/ && cd {p} && xargs -0 rm -f --",
                r = quote(&releases),
                prev = quote(prev),
                p = quote(&partial)
            );
            let cmd = Cmd::new("sh").args(["-c", &script]);
            let out = ssh
                .run_line(&crate::ssh::remote_line(&cmd), &doomed)
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
        let to_send: u64 = manifest
            .iter()
            .filter(|(k, e)| e.link.is_none() && !unchanged.contains(k))
            .map(|(_, e)| e.size)
            .sum();
        self.check_space(&releases, to_send).await?;
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
            let sent_before = stats.uploaded_bytes;
            sftp_put(&sftp, &dest, &data, e.mode, &|n| {
                progress(sent_before + n, to_send)
            })
            .await
            .map_err(|err| upload_err(k, &err))?;
            stats.uploaded_files += 1;
            stats.uploaded_bytes += e.size;
        }
        let json = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        sftp_put(
            &sftp,
            &format!("{releases}/{partial}/{MANIFEST}"),
            &json,
            0o644,
            &|_| {},
        )
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

/// Creates (or truncates) a file over SFTP with its content and mode. The
/// mode is set when the file is created, so a secret file is never readable
/// by others, not even for a moment.
async fn sftp_put(
    sftp: &russh_sftp::client::SftpSession,
    dest: &str,
    data: &[u8],
    mode: u32,
    sent: &(dyn Fn(u64) + Sync),
) -> Result<(), String> {
    use russh_sftp::protocol::{FileAttributes, OpenFlags};
    use tokio::io::AsyncWriteExt;
    let attrs = FileAttributes {
        permissions: Some(mode),
        ..Default::default()
    };
    let mut file = sftp
        .open_with_flags_and_attributes(
            dest,
            OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::WRITE,
            attrs.clone(),
        )
        .await
        .map_err(|e| e.to_string())?;
    // In chunks, so a progress bar moves during a large file.
    let mut done = 0u64;
    for chunk in data.chunks(1 << 20) {
        file.write_all(chunk).await.map_err(|e| e.to_string())?;
        done += chunk.len() as u64;
        sent(done);
    }
    file.shutdown().await.map_err(|e| e.to_string())?;
    // The umask may have narrowed the mode at creation; set it exactly.
    sftp.set_metadata(dest, attrs)
        .await
        .map_err(|e| e.to_string())
}

/// Bytes as people read them: `2.6 KiB`, `291.4 MiB`.
pub fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}
