//! The host a service is deployed to: this machine, or a server reached over
//! SSH. It runs commands (the [`Transport`] trait) and holds the release
//! directories, so the engine asks it to put a release in place, switch
//! `current` and remove old releases without caring where the files are.
//!
//! Transfer to an SSH host is incremental: each release carries a manifest
//! of its files (path, mode, size, blake3 hash); files unchanged since the
//! current release are copied on the server instead of uploaded.

mod lock;
mod manifest;
mod upload;

pub use lock::{REMOTE_LOCK_STALE_SECS, RemoteLockError};
pub use manifest::{FileEntry, Manifest, decode as decode_manifest, manifest_of};

use crate::hosting::release::ServiceDirs;
use crate::hosting::ssh::{SshError, SshSession};
use crate::support::cmd::{Cmd, CmdOutput, ExecError, LocalTransport, Transport, quote};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// A host operation that failed, saying what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A command could not run at all (spawn, timeout, connection).
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// The SSH session failed (opening SFTP, sending a command).
    #[error(transparent)]
    Ssh(#[from] SshError),
    /// A command ran and failed: the command and the end of its output.
    #[error("`{command}` failed:\n{output}")]
    CommandFailed { command: String, output: String },
    /// A shell snippet for a file operation failed on the host.
    #[error("on {host}: `{script}` failed: {output}")]
    ShellFailed {
        host: String,
        script: String,
        output: String,
    },
    /// Something on the host failed: what it was, and its output.
    #[error("{doing}: {output}")]
    Failed { doing: String, output: String },
    /// A file operation on this machine failed.
    #[error("{doing}: {source}")]
    Io {
        doing: String,
        #[source]
        source: std::io::Error,
    },
    /// The release does not fit on the target's disk.
    #[error("not enough disk space on {host} at {path}: the release needs {need}, {free} is free")]
    NoSpace {
        host: String,
        path: String,
        need: String,
        free: String,
    },
}

impl HostError {
    /// A file operation's failure, with what it was doing.
    pub fn io(doing: impl Into<String>) -> impl FnOnce(std::io::Error) -> HostError {
        let doing = doing.into();
        move |source| HostError::Io { doing, source }
    }
}

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
    pub async fn run(&self, cmd: &Cmd, timeout: Duration) -> Result<CmdOutput, HostError> {
        Ok(self.exec(cmd, timeout).await?)
    }

    /// Runs a command that must succeed; the error names the command and
    /// carries the end of its output.
    pub async fn run_ok(&self, cmd: &Cmd, timeout: Duration) -> Result<CmdOutput, HostError> {
        let out = self.run(cmd, timeout).await?;
        if out.success() {
            Ok(out)
        } else {
            Err(HostError::CommandFailed {
                command: cmd.display(),
                output: out.tail(8),
            })
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
    async fn check_space(&self, path: &str, need: u64) -> Result<(), HostError> {
        self.enough_space(path, need, self.free_bytes(path).await)
    }

    /// Refuses `need` bytes where only `free` are (unknown: allowed).
    fn enough_space(&self, path: &str, need: u64, free: Option<u64>) -> Result<(), HostError> {
        const MARGIN: u64 = 1 << 20;
        match free {
            Some(free) if free < need + MARGIN => Err(HostError::NoSpace {
                host: self.name(),
                path: path.to_string(),
                need: human_bytes(need + MARGIN),
                free: human_bytes(free),
            }),
            _ => Ok(()),
        }
    }

    /// Runs a shell snippet (for file operations on the host).
    async fn sh(&self, script: &str) -> Result<CmdOutput, HostError> {
        let out = self
            .exec(&Cmd::new("sh").args(["-c", script]), CMD_TIMEOUT)
            .await?;
        if out.success() {
            Ok(out)
        } else {
            Err(HostError::ShellFailed {
                host: self.name(),
                script: script.to_string(),
                output: out.tail(3),
            })
        }
    }

    /// The release `current` points at, if any.
    pub async fn current(&self, dirs: &ServiceDirs) -> Option<String> {
        match self {
            Host::Local(_) => dirs.current(),
            Host::Ssh(_) => {
                // One command: where the link points, if that is there.
                let link = quote(&dirs.current_link().to_string_lossy());
                let releases = quote(&dirs.releases().to_string_lossy());
                let script = format!(
                    "id=$(basename \"$(readlink {link})\") && test -n \"$id\" && test -d {releases}/\"$id\" && printf '%s\\n' \"$id\" || true"
                );
                let out = self.sh(&script).await.ok()?;
                Some(out.stdout.trim().to_string()).filter(|id| !id.is_empty())
            }
        }
    }

    /// Points `current` at a release atomically (rename over the old link).
    pub async fn switch_current(&self, dirs: &ServiceDirs, id: &str) -> Result<(), HostError> {
        match self {
            Host::Local(_) => dirs
                .switch_current(id)
                .map_err(HostError::io("renaming the `current` link")),
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

    /// Appends a line to the service's audit log on an SSH host
    /// (`ROOT/audit.log`), so the host itself records who deployed what.
    pub async fn audit(&self, dirs: &ServiceDirs, line: &str) -> Result<(), HostError> {
        let Host::Ssh(s) = self else { return Ok(()) };
        let log = dirs.root.join("audit.log");
        let cmd = Cmd::new("sh").args(["-c", &format!("cat >> {}", quote(&log.to_string_lossy()))]);
        let out = s
            .run_line(
                &crate::hosting::ssh::remote_line(&cmd),
                format!("{line}\n").as_bytes(),
            )
            .await?;
        if out.success() {
            Ok(())
        } else {
            Err(HostError::Failed {
                doing: format!("writing the audit log on {}", self.name()),
                output: out.tail(2),
            })
        }
    }

    /// Writes a file on the host with a mode (parent directories made as
    /// needed). Written beside the target and renamed into place.
    pub async fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<(), HostError> {
        self.write_files(&[(path, data, mode)], None).await
    }

    /// Writes files as [`Host::write_file`] does, then runs `then` (a shell
    /// line) if given: over SSH all in one command, the contents on its
    /// stdin one after the other (never in argv).
    pub async fn write_files(
        &self,
        files: &[(&str, &[u8], u32)],
        then: Option<&str>,
    ) -> Result<(), HostError> {
        let parent = |path: &str| {
            Path::new(path)
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|| "/".into())
        };
        let tmp = |path: &str| format!("{path}.deployer-tmp");
        let Host::Ssh(s) = self else {
            for (path, data, mode) in files {
                let (tmp, parent) = (tmp(path), parent(path));
                let write = || -> std::io::Result<()> {
                    std::fs::create_dir_all(&parent)?;
                    let mut opts = std::fs::OpenOptions::new();
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.write(true).create(true).truncate(true).mode(*mode);
                    std::io::Write::write_all(&mut opts.open(&tmp)?, data)?;
                    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(*mode))?;
                    std::fs::rename(&tmp, path)
                };
                write().map_err(HostError::io(format!("writing {path}")))?;
            }
            return match then {
                Some(line) => self.sh(line).await.map(|_| ()),
                None => Ok(()),
            };
        };
        // Each made private, given its mode, then renamed into place; all
        // but the last read to their exact length (`dd bs=1`: a pipe gives
        // no more than is asked).
        let mut script = String::from("umask 077");
        let mut input = Vec::new();
        for (i, (path, data, mode)) in files.iter().enumerate() {
            let (t, p) = (quote(&tmp(path)), quote(path));
            let read = match i + 1 == files.len() {
                true => format!("cat > {t}"),
                false => format!("dd bs=1 count={} of={t} 2>/dev/null", data.len()),
            };
            script.push_str(&format!(
                " && mkdir -p {} && {read} && chmod {mode:o} {t} && mv -f {t} {p}",
                quote(&parent(path))
            ));
            input.extend_from_slice(data);
        }
        if let Some(line) = then {
            script.push_str(&format!(" && {line}"));
        }
        let cmd = Cmd::new("sh").args(["-c", &script]);
        let out = s
            .run_line(&crate::hosting::ssh::remote_line(&cmd), &input)
            .await?;
        if out.success() {
            return Ok(());
        }
        let names: Vec<&str> = files.iter().map(|(p, _, _)| *p).collect();
        let then = then.map(|l| format!(", then `{l}`")).unwrap_or_default();
        Err(HostError::Failed {
            doing: format!("writing {} on {}{then}", names.join(", "), self.name()),
            output: out.tail(3),
        })
    }

    /// Whether release `id`'s directory is there.
    pub async fn has_release(&self, dirs: &ServiceDirs, id: &str) -> bool {
        let dir = dirs.release(id);
        let cmd = Cmd::new("test").args(["-d", &dir.to_string_lossy()]);
        self.exec(&cmd, Duration::from_secs(30))
            .await
            .is_ok_and(|o| o.success())
    }

    pub async fn remove_release(&self, dirs: &ServiceDirs, id: &str) -> Result<(), HostError> {
        match self {
            Host::Local(_) => dirs
                .remove_release(id)
                .map_err(HostError::io(format!("removing release {id}"))),
            Host::Ssh(_) => self
                .sh(&format!(
                    "rm -rf {}",
                    quote(&dirs.release(id).to_string_lossy())
                ))
                .await
                .map(|_| ()),
        }
    }
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
