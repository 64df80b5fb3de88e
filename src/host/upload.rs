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
    /// Two commands on the host, whatever the release: one prepares (a
    /// clean partial directory with every subdirectory, the free space,
    /// the host's tar) while SFTP reads the previous release's manifest;
    /// the other copies the unchanged files from the previous release,
    /// unpacks the changed ones streamed as tar, and publishes the release.
    /// Every command costs a round trip and a login shell on the host.
    async fn run(
        &self,
        id: &str,
        previous: Option<&str>,
        progress: &Progress<'_>,
    ) -> Result<TransferStats, HostError> {
        let (prepared, opened, tar_here) =
            tokio::join!(self.prepare(), self.open(previous), local_gnu_tar());
        let (free, tar_there) = prepared?;
        let (sftp, old) = opened?;
        // Unchanged files come from the previous release on the server.
        // (`old` is empty without a previous release, so is `unchanged`.)
        let unchanged: Vec<&String> = self
            .manifest
            .iter()
            .filter(|(k, e)| e.link.is_none() && old.get(*k) == Some(e))
            .map(|(k, _)| k)
            .collect();
        let mut stats = TransferStats::default();
        for (k, e) in &self.manifest {
            stats.files += 1;
            if e.link.is_none() {
                stats.bytes += e.size;
                if unchanged.contains(&k) {
                    stats.linked_files += 1;
                } else {
                    stats.uploaded_files += 1;
                    stats.uploaded_bytes += e.size;
                }
            }
        }
        self.host
            .enough_space(&self.releases, stats.uploaded_bytes, free)?;
        let dir = format!("{}/{}", self.releases, self.partial);
        let json = serde_json::to_vec_pretty(&self.manifest).unwrap_or_default();
        sftp_put(&sftp, &format!("{dir}/{MANIFEST}"), &json, 0o644, &|_| {})
            .await
            .map_err(HostError::io(self.uploading(MANIFEST)))?;
        let copy = match previous {
            Some(prev) if !unchanged.is_empty() => {
                let mut list = Vec::new();
                for k in &unchanged {
                    list.extend_from_slice(k.as_bytes());
                    list.push(0);
                }
                sftp_put(&sftp, &self.list_path(), &list, 0o600, &|_| {})
                    .await
                    .map_err(HostError::io(self.uploading("the list of unchanged files")))?;
                Some(prev)
            }
            _ => None,
        };
        let tar = tar_here && tar_there;
        if !tar {
            self.send_sftp(&sftp, &unchanged, stats.uploaded_bytes, progress)
                .await?;
        }
        let _ = sftp.close().await;
        self.finish(
            id,
            copy,
            tar.then_some(&unchanged[..]),
            stats.uploaded_bytes,
            progress,
        )
        .await?;
        Ok(stats)
    }

    /// Opens SFTP and reads the previous release's manifest (empty when
    /// there is none or it cannot be read: everything is sent then).
    async fn open(
        &self,
        previous: Option<&str>,
    ) -> Result<(russh_sftp::client::SftpSession, Manifest), HostError> {
        let sftp = self.ssh.sftp().await?;
        let old = match previous {
            Some(p) => sftp
                .read(format!("{}/{p}/{MANIFEST}", self.releases))
                .await
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default(),
            None => Manifest::new(),
        };
        Ok((sftp, old))
    }

    /// One round trip: partial copies left by an upload that broke off go,
    /// a clean partial directory with every subdirectory is made; then the
    /// free space where releases live, and whether the host has GNU tar.
    async fn prepare(&self) -> Result<(Option<u64>, bool), HostError> {
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
        script.push_str(&format!(
            " && df -Pk {} | tail -n 1 && {{ tar --version 2>/dev/null | head -n 1; true; }}",
            quote(&self.releases)
        ));
        let out = self.host.sh(&script).await?;
        let mut lines = out.stdout.lines();
        let free = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok())
            .map(|kib| kib * 1024);
        let gnu_tar = lines.next().is_some_and(|l| l.contains("GNU tar"));
        Ok((free, gnu_tar))
    }

    /// Where the names of the unchanged files wait for the copy (removed
    /// with the partial directory when an upload breaks off).
    fn list_path(&self) -> String {
        format!(
            "{}/{}.list.partial",
            self.releases,
            self.partial.trim_end_matches(".partial")
        )
    }

    fn uploading(&self, what: &str) -> String {
        format!("uploading {what} to {}", self.host.name())
    }

    /// Sends what changed file by file over SFTP, for hosts without GNU
    /// tar.
    async fn send_sftp(
        &self,
        sftp: &russh_sftp::client::SftpSession,
        unchanged: &[&String],
        to_send: u64,
        progress: &Progress<'_>,
    ) -> Result<(), HostError> {
        let dir = format!("{}/{}", self.releases, self.partial);
        let mut sent = 0;
        for (k, e) in &self.manifest {
            let dest = format!("{dir}/{k}");
            // Symlinks are made by `finish` (OpenSSH's SFTP server takes
            // a symlink's two paths the other way round).
            if e.link.is_some() || unchanged.contains(&k) {
                continue;
            }
            let data =
                std::fs::read(self.src.join(k)).map_err(HostError::io(format!("reading {k}")))?;
            let before = sent;
            sftp_put(sftp, &dest, &data, e.mode, &|n| {
                progress(before + n, to_send)
            })
            .await
            .map_err(HostError::io(self.uploading(k)))?;
            sent += e.size;
        }
        Ok(())
    }

    /// The second command: unchanged files copied from the previous release
    /// on the server (one `cp`, copy-on-write where the filesystem can),
    /// then what changed unpacked from a tar stream made here as it is sent
    /// (when `tar` names the unchanged files; else symlinks made here, the
    /// files having gone over SFTP), then the partial directory
    /// synced and renamed into place. Copied, not hard-linked: a build or
    /// a service writing to a file of the new release must never change
    /// the rollback target's copy, and files the build or the service made
    /// in the previous release are never carried over.
    async fn finish(
        &self,
        id: &str,
        copy_from: Option<&str>,
        tar: Option<&[&String]>,
        to_send: u64,
        progress: &Progress<'_>,
    ) -> Result<(), HostError> {
        let (r, p) = (quote(&self.releases), quote(&self.partial));
        let mut script = format!("cd {r}");
        if let Some(prev) = copy_from {
            let list = quote(&self.list_path());
            script.push_str(&format!(
                " && (cd {prev} && xargs -0 cp -p --reflink=auto --parents -t ../{p} -- < {list}) && rm -f {list}",
                prev = quote(prev)
            ));
        }
        let names: Vec<&String> = match tar {
            Some(unchanged) => self
                .manifest
                .keys()
                .filter(|k| !unchanged.contains(k))
                .collect(),
            None => Vec::new(),
        };
        if !names.is_empty() {
            script.push_str(&format!(" && (cd {p} && tar -x -f - --no-same-owner)"));
        } else if tar.is_none() {
            // Without tar, symlinks are made here.
            for (k, e) in &self.manifest {
                if let Some(target) = &e.link {
                    script.push_str(&format!(" && ln -s -- {} {p}/{}", quote(target), quote(k)));
                }
            }
        }
        // On disk before the rename publishes the release.
        script.push_str(&format!(
            " && sync -f {p} && mv -T {p} {id} && sync -f .",
            id = quote(id)
        ));
        let line = crate::ssh::remote_line(&Cmd::new("sh").args(["-c", &script]));
        let (remote, local) = if names.is_empty() {
            (self.ssh.run_line(&line, &[]).await?, None)
        } else {
            self.send_tar(&line, &names, to_send, progress).await?
        };
        if remote.success() && local.as_ref().is_none_or(|l| l.status.success()) {
            return Ok(());
        }
        Err(HostError::Failed {
            doing: format!("putting the release in place on {}", self.host.name()),
            output: format!(
                "{}{}",
                local
                    .map(|l| String::from_utf8_lossy(&l.stderr).into_owned())
                    .unwrap_or_default(),
                remote.tail(3)
            ),
        })
    }

    /// Runs `line` on the host with `names` streamed to it as one tar
    /// archive, made here by tar as it is sent (never whole in memory).
    async fn send_tar(
        &self,
        line: &str,
        names: &[&String],
        to_send: u64,
        progress: &Progress<'_>,
    ) -> Result<(crate::cmd::CmdOutput, Option<std::process::Output>), HostError> {
        let mut list = Vec::new();
        for k in names {
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
        let remote = self
            .watched(self.ssh.run_line_from(line, counted), &last_read)
            .await?;
        let local = tar
            .wait_with_output()
            .await
            .map_err(HostError::io("running tar"))?;
        Ok((remote, Some(local)))
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

/// Whether GNU tar runs on this machine.
async fn local_gnu_tar() -> bool {
    tokio::process::Command::new("tar")
        .arg("--version")
        .output()
        .await
        .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"tar (GNU tar)"))
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
