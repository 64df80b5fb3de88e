//! Putting a release on a host: a copy on this machine; over SSH an
//! incremental upload. Each remote release carries a manifest of its files
//! (path, mode, size, blake3 hash); files unchanged since the previous
//! release are copied on the server instead of uploaded. The rest go as one
//! tar stream over an exec channel when both ends have GNU tar, else file
//! by file over SFTP.

use super::{Host, HostError, MANIFEST, Progress, quote};
use crate::cmd::Cmd;
use crate::model::TransferStats;
use crate::release::{self, ServiceDirs};
use crate::ssh::SshSession;
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

impl Host {
    /// Puts a service directory in place as release `id`. Locally a copy;
    /// over SSH an upload of what changed since `previous`.
    pub async fn put_release(
        &self,
        src: &Path,
        dirs: &ServiceDirs,
        id: &str,
        previous: Option<&str>,
        progress: &Progress<'_>,
    ) -> Result<TransferStats, HostError> {
        let reading = || format!("reading {}", src.display());
        match self {
            Host::Local(_) => {
                let mut need = 0;
                for f in release::release_files(src).map_err(HostError::io(reading()))? {
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
                // Copying is disk work: on a blocking thread.
                let (from, to, release) = (src.to_path_buf(), dirs.clone(), id.to_string());
                tokio::task::spawn_blocking(move || release::copy_release(&from, &to, &release))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r)
                    .map_err(HostError::io(format!(
                        "copying {} to release {id}",
                        src.display()
                    )))
            }
            Host::Ssh(s) => {
                let from = src.to_path_buf();
                let manifest = tokio::task::spawn_blocking(move || manifest_of(&from))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r)
                    .map_err(HostError::io(reading()))?;
                let upload = Upload {
                    host: self,
                    ssh: s,
                    src,
                    releases: dirs.releases().to_string_lossy().into_owned(),
                    partial: format!(".{id}.partial"),
                    manifest,
                };
                let result = upload.run(id, previous, progress).await;
                if result.is_err() {
                    // A broken-off upload leaves no partial copy behind when
                    // the host still answers.
                    let partial = dirs.releases().join(&upload.partial);
                    let _ = self
                        .sh(&format!("rm -rf {}", quote(&partial.to_string_lossy())))
                        .await;
                }
                result
            }
        }
    }
}

/// One release going to an SSH host, into `releases/.ID.partial` first.
struct Upload<'a> {
    host: &'a Host,
    ssh: &'a SshSession,
    src: &'a Path,
    releases: String,
    partial: String,
    manifest: Manifest,
}

impl Upload<'_> {
    async fn run(
        &self,
        id: &str,
        previous: Option<&str>,
        progress: &Progress<'_>,
    ) -> Result<TransferStats, HostError> {
        let sftp = self.ssh.sftp().await?;
        let old: Manifest = match previous {
            Some(p) => sftp
                .read(format!("{}/{p}/{MANIFEST}", self.releases))
                .await
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default(),
            None => Manifest::new(),
        };
        self.make_dirs().await?;
        let mut stats = TransferStats::default();
        // Unchanged files come from the previous release on the server.
        // (`old` is empty without a previous release, so is `unchanged`.)
        let unchanged: Vec<&String> = self
            .manifest
            .iter()
            .filter(|(k, e)| e.link.is_none() && old.get(*k) == Some(e))
            .map(|(k, _)| k)
            .collect();
        if let (Some(prev), false) = (previous, unchanged.is_empty()) {
            self.copy_unchanged(prev, &unchanged).await?;
            stats.linked_files = unchanged.len() as u64;
        }
        self.send(&sftp, &unchanged, &mut stats, progress).await?;
        // On disk before the rename publishes the release.
        self.host
            .sh(&format!(
                "cd {r} && sync -f {p} && mv -T {p} {id} && sync -f .",
                r = quote(&self.releases),
                p = quote(&self.partial),
                id = quote(id)
            ))
            .await?;
        let _ = sftp.close().await;
        Ok(stats)
    }

    /// One round trip: a clean partial directory with every subdirectory.
    /// Partial copies left by an upload that broke off go first.
    async fn make_dirs(&self) -> Result<(), HostError> {
        let mut dirs_needed: Vec<String> = self
            .manifest
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
        let mut script = format!(
            "mkdir -p {r} && cd {r} && find . -maxdepth 1 -name '.*.partial' -exec rm -rf {{}} + && mkdir {p} && cd {p}",
            r = quote(&self.releases),
            p = quote(&self.partial)
        );
        for chunk in dirs_needed.chunks(200) {
            script.push_str(" && mkdir -p");
            for d in chunk {
                script.push(' ');
                script.push_str(&quote(d));
            }
        }
        self.host.sh(&script).await.map(|_| ())
    }

    /// Unchanged source files copied from the previous release on the
    /// server (one `cp` for all, copy-on-write where the filesystem can),
    /// not uploaded. Copied, not hard-linked: a build or a service writing
    /// to a file of the new release must never change the rollback
    /// target's copy, and files the build or the service made in the
    /// previous release are never carried over.
    async fn copy_unchanged(&self, prev: &str, unchanged: &[&String]) -> Result<(), HostError> {
        let mut list = Vec::new();
        for k in unchanged {
            list.extend_from_slice(k.as_bytes());
            list.push(0);
        }
        let script = format!(
            "cd {r}/{prev} && xargs -0 cp -p --reflink=auto --parents -t {r}/{p} --",
            r = quote(&self.releases),
            prev = quote(prev),
            p = quote(&self.partial)
        );
        let cmd = Cmd::new("sh").args(["-c", &script]);
        let out = self
            .ssh
            .run_line(&crate::ssh::remote_line(&cmd), &list)
            .await?;
        if out.success() {
            Ok(())
        } else {
            Err(HostError::Failed {
                doing: format!("copying unchanged files on {}", self.host.name()),
                output: out.tail(3),
            })
        }
    }

    /// Sends what changed (and every symlink), then the manifest.
    async fn send(
        &self,
        sftp: &russh_sftp::client::SftpSession,
        unchanged: &[&String],
        stats: &mut TransferStats,
        progress: &Progress<'_>,
    ) -> Result<(), HostError> {
        let uploading = |k: &str| format!("uploading {k} to {}", self.host.name());
        let to_send: u64 = self
            .manifest
            .iter()
            .filter(|(k, e)| e.link.is_none() && !unchanged.contains(k))
            .map(|(_, e)| e.size)
            .sum();
        self.host.check_space(&self.releases, to_send).await?;
        let dir = format!("{}/{}", self.releases, self.partial);
        if self.tar_both_ends().await {
            let sent = self.send_tar(unchanged, to_send, progress).await?;
            for (k, e) in &self.manifest {
                stats.files += 1;
                if e.link.is_none() {
                    stats.bytes += e.size;
                }
                if e.link.is_none() && !unchanged.contains(&k) {
                    stats.uploaded_files += 1;
                    stats.uploaded_bytes += e.size;
                }
            }
            debug_assert_eq!(sent, stats.uploaded_files);
            let json = serde_json::to_vec_pretty(&self.manifest).unwrap_or_default();
            return sftp_put(sftp, &format!("{dir}/{MANIFEST}"), &json, 0o644, &|_| {})
                .await
                .map_err(HostError::io(uploading(MANIFEST)));
        }
        for (k, e) in &self.manifest {
            let dest = format!("{dir}/{k}");
            stats.files += 1;
            if let Some(target) = &e.link {
                sftp.symlink(dest, target.clone())
                    .await
                    .map_err(|err| HostError::io(uploading(k))(std::io::Error::other(err)))?;
                continue;
            }
            stats.bytes += e.size;
            if unchanged.contains(&k) {
                continue;
            }
            let data =
                std::fs::read(self.src.join(k)).map_err(HostError::io(format!("reading {k}")))?;
            let sent_before = stats.uploaded_bytes;
            sftp_put(sftp, &dest, &data, e.mode, &|n| {
                progress(sent_before + n, to_send)
            })
            .await
            .map_err(HostError::io(uploading(k)))?;
            stats.uploaded_files += 1;
            stats.uploaded_bytes += e.size;
        }
        let json = serde_json::to_vec_pretty(&self.manifest).unwrap_or_default();
        sftp_put(sftp, &format!("{dir}/{MANIFEST}"), &json, 0o644, &|_| {})
            .await
            .map_err(HostError::io(uploading(MANIFEST)))
    }
}

impl Upload<'_> {
    /// Whether GNU tar runs here and on the host: the files then go as one
    /// tar stream over an exec channel, not one SFTP file at a time.
    async fn tar_both_ends(&self) -> bool {
        let here = tokio::process::Command::new("tar")
            .arg("--version")
            .output()
            .await
            .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"tar (GNU tar)"));
        here && self
            .host
            .sh("tar --version | grep -q 'GNU tar'")
            .await
            .is_ok()
    }

    /// Sends what changed (and every symlink) as one tar stream, made here
    /// by tar as it is sent and unpacked on the host into the partial
    /// directory. Returns the files sent.
    async fn send_tar(
        &self,
        unchanged: &[&String],
        to_send: u64,
        progress: &Progress<'_>,
    ) -> Result<u64, HostError> {
        let names: Vec<&String> = self
            .manifest
            .iter()
            .filter(|(k, _)| !unchanged.contains(k))
            .map(|(k, _)| k)
            .collect();
        let files = self
            .manifest
            .iter()
            .filter(|(k, e)| e.link.is_none() && !unchanged.contains(k))
            .count() as u64;
        if names.is_empty() {
            return Ok(0);
        }
        let mut list = Vec::new();
        for k in &names {
            list.extend_from_slice(k.as_bytes());
            list.push(0);
        }
        let mut tar = local_tar(self.src)?;
        // The names go in while the archive comes out (a long list would
        // fill both pipes otherwise).
        let mut names_in = tar.stdin.take().expect("piped");
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = names_in.write_all(&list).await;
        });
        let out = tar.stdout.take().expect("piped");
        let last_read = std::sync::Mutex::new(std::time::Instant::now());
        let counted = Counted {
            inner: out,
            sent: 0,
            total: to_send,
            progress,
            last_read: &last_read,
        };
        let script = format!(
            "cd {r}/{p} && tar -x -f - --no-same-owner",
            r = quote(&self.releases),
            p = quote(&self.partial)
        );
        let line = crate::ssh::remote_line(&Cmd::new("sh").args(["-c", &script]));
        let remote = self
            .watched(self.ssh.run_line_from(&line, counted), &last_read)
            .await?;
        let local = tar
            .wait_with_output()
            .await
            .map_err(HostError::io("running tar"))?;
        if !local.status.success() || !remote.success() {
            return Err(HostError::Failed {
                doing: format!("uploading the release to {} (tar)", self.host.name()),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&local.stderr),
                    remote.tail(3)
                ),
            });
        }
        Ok(files)
    }

    /// Runs an upload's remote command, watching it: a channel waiting
    /// for room to send is not woken when the connection dies, so give up
    /// on a dead connection or one that took nothing for [`STALL`].
    async fn watched(
        &self,
        run: impl std::future::Future<Output = Result<crate::cmd::CmdOutput, crate::ssh::SshError>>,
        last_read: &std::sync::Mutex<std::time::Instant>,
    ) -> Result<crate::cmd::CmdOutput, HostError> {
        tokio::pin!(run);
        loop {
            tokio::select! {
                done = &mut run => return Ok(done?),
                _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {
                    let idle = last_read.lock().unwrap().elapsed();
                    if self.ssh.is_closed() || idle > STALL {
                        return Err(HostError::Failed {
                            doing: format!("uploading the release to {}", self.host.name()),
                            output: format!(
                                "the connection closed or took nothing for {} s",
                                idle.as_secs()
                            ),
                        });
                    }
                }
            }
        }
    }
}

/// GNU tar writing an archive of `src`'s files, named on its stdin.
fn local_tar(src: &Path) -> Result<tokio::process::Child, HostError> {
    tokio::process::Command::new("tar")
        .args(["-c", "-f", "-", "--null", "--no-recursion", "-C"])
        .arg(src)
        .args(["-T", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(HostError::io("starting tar"))
}

/// How long an upload may take nothing before the connection counts as
/// dead.
const STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// A reader that reports how much of it was read, and when last.
struct Counted<'a, R> {
    inner: R,
    sent: u64,
    total: u64,
    progress: &'a Progress<'a>,
    last_read: &'a std::sync::Mutex<std::time::Instant>,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<'_, R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        if read > 0 {
            *self.last_read.lock().unwrap() = std::time::Instant::now();
            self.sent += read;
            let (sent, total) = (self.sent.min(self.total), self.total);
            (self.progress)(sent, total);
        }
        polled
    }
}

/// Creates (or truncates) a file over SFTP with its content and mode. The
/// mode is set when the file is created, so a secret file is never readable
/// by others, not even for a moment.
pub(super) async fn sftp_put(
    sftp: &russh_sftp::client::SftpSession,
    dest: &str,
    data: &[u8],
    mode: u32,
    sent: &(dyn Fn(u64) + Sync),
) -> std::io::Result<()> {
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
        .map_err(std::io::Error::other)?;
    // In chunks, so a progress bar moves during a large file.
    let mut done = 0u64;
    for chunk in data.chunks(1 << 20) {
        file.write_all(chunk).await?;
        done += chunk.len() as u64;
        sent(done);
    }
    file.shutdown().await?;
    // The umask may have narrowed the mode at creation; set it exactly.
    sftp.set_metadata(dest, attrs)
        .await
        .map_err(std::io::Error::other)
}
