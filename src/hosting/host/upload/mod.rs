//! Putting a release on a host: a copy on this machine; over SSH an
//! incremental upload. Each remote release carries a manifest of its files
//! (path, mode, size, blake3 hash); files unchanged since the previous
//! release are copied on the server instead of uploaded. The rest go as one
//! tar stream over an exec channel when both ends have GNU tar, else file
//! by file over SFTP.

use super::manifest::{self, Manifest, manifest_of};
use super::{Host, HostError, MANIFEST, Progress, quote};
use crate::hosting::release::{self, ServiceDirs};
use crate::hosting::ssh::SshSession;
use crate::model::TransferStats;
use crate::support::cmd::Cmd;
use sftp::sftp_put;
use std::collections::BTreeSet;
use std::path::Path;
use stream::local_gnu_tar;

mod sftp;
mod stream;

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
                    encoded: manifest::encode(&manifest),
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
    /// The manifest as the host stores it.
    encoded: String,
}

/// How the unchanged files and the manifest get into the new release.
enum Carry<'m> {
    /// Nothing to copy: a first release, or nothing unchanged. The
    /// manifest went over SFTP.
    Nothing,
    /// Nothing to copy, and the manifest goes in the second command (it
    /// fits in its command line).
    Fresh,
    /// The unchanged files' names were put beside the partial directory
    /// (and the whole manifest in it).
    Listed(&'m str),
    /// Every file of the previous release (its [`FILES`] list) is copied
    /// and those that changed are removed; the manifest is made from the
    /// previous one by a `sed` script and checked against its sha256. What
    /// crosses the network follows the change, not the release.
    Edited {
        prev: &'m str,
        changed: Vec<&'m String>,
        script: String,
        sha: String,
    },
}

/// What the first command found on the host.
struct Found {
    free: Option<u64>,
    gnu_tar: bool,
    /// The previous release has its [`FILES`].
    has_files: bool,
    /// The previous release's manifest as stored (empty when there is
    /// none); `None` when it did not fit in the command's output.
    old: Option<Vec<u8>>,
}

/// The names of a release's files, NUL-separated, written on the host when
/// it is published (for the next upload's [`Carry::Edited`]).
const FILES: &str = ".deployer-files";

/// The most a `sed` script and the changed names may take in the
/// command line (one argument may hold 128 KiB on Linux).
const INLINE_MAX: usize = 64 << 10;

impl Upload<'_> {
    /// Two commands on the host, whatever the release: one prepares (a
    /// clean partial directory with every subdirectory) and prints the
    /// free space, the host's tar and the previous release's manifest; the
    /// other copies the unchanged files from the previous release, unpacks
    /// the changed ones streamed as tar, and publishes the release. SFTP
    /// only for what does not fit in a command line, or without tar.
    /// Every command costs a round trip and a login shell on the host.
    async fn run(
        &self,
        id: &str,
        previous: Option<&str>,
        progress: &Progress<'_>,
    ) -> Result<TransferStats, HostError> {
        let (prepared, tar_here) = tokio::join!(self.prepare(previous), local_gnu_tar());
        let found = prepared?;
        // SFTP only when needed: a manifest too long for the first
        // command's output, lists to put, no tar.
        let mut sftp = None;
        let old_raw = match (previous, found.old) {
            (Some(prev), None) => {
                let path = format!("{}/{prev}/{MANIFEST}", self.releases);
                let s = self.sftp(&mut sftp).await?;
                s.read(path).await.unwrap_or_default()
            }
            (_, old) => old.unwrap_or_default(),
        };
        let old = manifest::decode(&old_raw).unwrap_or_default();
        // Unchanged files come from the previous release on the server.
        // (`old` is empty without a previous release, so is `unchanged`.)
        let unchanged: BTreeSet<&String> = self
            .manifest
            .iter()
            .filter(|(k, e)| e.link.is_none() && old.get(*k) == Some(e))
            .map(|(k, _)| k)
            .collect();
        let stats = self.stats(&unchanged);
        self.host
            .enough_space(&self.releases, stats.uploaded_bytes, found.free)?;
        let tar = tar_here && found.gnu_tar;
        let carry = match previous {
            Some(prev) if tar && found.has_files => self.edit(prev, &old_raw, &old, &unchanged),
            _ => None,
        };
        let nothing_to_copy = previous.is_none() || unchanged.is_empty();
        let carry = match carry {
            Some(c) => c,
            None if tar && nothing_to_copy && inline_len(&self.encoded) < INLINE_MAX => {
                Carry::Fresh
            }
            None => {
                let s = self.sftp(&mut sftp).await?;
                self.put_lists(s, previous, &unchanged).await?
            }
        };
        if !tar {
            let s = self.sftp(&mut sftp).await?;
            self.send_sftp(s, &unchanged, stats.uploaded_bytes, progress)
                .await?;
        }
        let sent = (tar, &unchanged, stats.uploaded_bytes);
        let done = match self.finish(id, &carry, sent, progress).await {
            // The manifest made on the host is not the one expected: put
            // it whole, then publish.
            Err(HostError::Failed { output, .. }) if output.contains(EDIT_FAILED) => {
                self.republish(id, tar, self.sftp(&mut sftp).await?).await
            }
            done => done,
        };
        if let Some(s) = sftp {
            let _ = s.close().await;
        }
        done.map(|_| stats)
    }

    /// The SFTP session of this upload, opened the first time it is asked
    /// for.
    async fn sftp<'s>(
        &self,
        slot: &'s mut Option<russh_sftp::client::SftpSession>,
    ) -> Result<&'s russh_sftp::client::SftpSession, HostError> {
        if slot.is_none() {
            *slot = Some(self.ssh.sftp().await?);
        }
        Ok(slot.as_ref().expect("just opened"))
    }

    /// The whole manifest put over SFTP, then the release published.
    async fn republish(
        &self,
        id: &str,
        tar: bool,
        sftp: &russh_sftp::client::SftpSession,
    ) -> Result<(), HostError> {
        self.put_manifest(sftp).await?;
        let script = format!("cd {}{}", quote(&self.releases), self.publish(id, tar));
        let line = crate::hosting::ssh::remote_line(&Cmd::new("sh").args(["-c", &script]));
        let out = self.ssh.run_line(&line, &[]).await?;
        match out.success() {
            true => Ok(()),
            false => Err(self.not_in_place(out.tail(3))),
        }
    }

    fn stats(&self, unchanged: &BTreeSet<&String>) -> TransferStats {
        let mut stats = TransferStats::default();
        for (k, e) in &self.manifest {
            stats.files += 1;
            if e.link.is_none() {
                stats.bytes += e.size;
                if unchanged.contains(k) {
                    stats.linked_files += 1;
                } else {
                    stats.uploaded_files += 1;
                    stats.uploaded_bytes += e.size;
                }
            }
        }
        stats
    }

    /// [`Carry::Edited`], when the previous release's manifest is in lines,
    /// no file went away (a file may have become a directory) and the
    /// script and the changed names fit in the command line.
    fn edit<'m>(
        &'m self,
        prev: &'m str,
        old_raw: &[u8],
        old: &Manifest,
        unchanged: &BTreeSet<&String>,
    ) -> Option<Carry<'m>> {
        if old.keys().any(|k| !self.manifest.contains_key(k)) {
            return None;
        }
        let script = manifest::sed_edit(old_raw, &self.manifest)?;
        let changed: Vec<&String> = self
            .manifest
            .keys()
            .filter(|k| old.contains_key(*k) && !unchanged.contains(k))
            .collect();
        let names: usize = changed.iter().map(|k| inline_len(k)).sum();
        (inline_len(&script) + names < INLINE_MAX).then(|| Carry::Edited {
            prev,
            changed,
            sha: manifest::sha256_hex(self.encoded.as_bytes()),
            script,
        })
    }

    /// [`Carry::Listed`] (or nothing to copy): the manifest and the
    /// unchanged files' names put over SFTP.
    async fn put_lists<'m>(
        &'m self,
        sftp: &russh_sftp::client::SftpSession,
        previous: Option<&'m str>,
        unchanged: &BTreeSet<&String>,
    ) -> Result<Carry<'m>, HostError> {
        self.put_manifest(sftp).await?;
        let Some(prev) = previous.filter(|_| !unchanged.is_empty()) else {
            return Ok(Carry::Nothing);
        };
        let list = nul_separated(unchanged.iter().copied());
        sftp_put(sftp, &self.list_path(), &list, 0o600, &|_| {})
            .await
            .map_err(HostError::io(self.uploading("the list of unchanged files")))?;
        Ok(Carry::Listed(prev))
    }

    async fn put_manifest(&self, sftp: &russh_sftp::client::SftpSession) -> Result<(), HostError> {
        let dest = format!("{}/{}/{MANIFEST}", self.releases, self.partial);
        sftp_put(sftp, &dest, self.encoded.as_bytes(), 0o644, &|_| {})
            .await
            .map_err(HostError::io(self.uploading(MANIFEST)))
    }

    /// One round trip: partial copies left by an upload that broke off go,
    /// a clean partial directory with every subdirectory is made; then the
    /// free space where releases live, whether the host has GNU tar, and
    /// the previous release's manifest and list of files.
    async fn prepare(&self, previous: Option<&str>) -> Result<Found, HostError> {
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
        let r = quote(&self.releases);
        let mut script = format!(
            "mkdir -p {r} && cd {r} && find . -maxdepth 1 -name '.*.partial' -exec rm -rf {{}} + && mkdir {p} && cd {p}",
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
            " && df -Pk {r} | tail -n 1 && echo \"tar $(tar --version 2>/dev/null | head -n 1)\""
        ));
        if let Some(prev) = previous {
            let prev = quote(&format!("{}/{prev}", self.releases));
            script.push_str(&format!(
                " && {{ test -f {prev}/{FILES} && echo files || echo nofiles; }} && {{ cat {prev}/{MANIFEST} 2>/dev/null; true; }}"
            ));
        }
        let out = self.host.sh(&script).await?;
        let mut parts = out.stdout.splitn(4, '\n');
        let free = parts
            .next()
            .and_then(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok())
            .map(|kib| kib * 1024);
        let gnu_tar = parts.next().is_some_and(|l| l.contains("GNU tar"));
        let has_files = parts.next() == Some("files");
        // Output beyond the cap lost its start: read the manifest again.
        let whole = out.stdout.len() < crate::support::cmd::OUTPUT_CAP;
        let old = match (previous, whole) {
            (None, _) => Some(Vec::new()),
            (Some(_), true) => Some(parts.next().unwrap_or("").as_bytes().to_vec()),
            (Some(_), false) => None,
        };
        Ok(Found {
            free,
            gnu_tar,
            has_files,
            old,
        })
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

    /// The second command: unchanged files copied from the previous release
    /// on the server (one `cp`, copy-on-write where the filesystem can),
    /// then what changed unpacked from a tar stream made here as it is sent
    /// (with `tar`; else symlinks made here, the files having gone over
    /// SFTP), then the partial directory synced and renamed into place.
    /// Copied, not hard-linked: a build or a service writing to a file of
    /// the new release must never change the rollback target's copy, and
    /// files the build or the service made in the previous release are
    /// never carried over.
    async fn finish(
        &self,
        id: &str,
        carry: &Carry<'_>,
        (tar, unchanged, to_send): (bool, &BTreeSet<&String>, u64),
        progress: &Progress<'_>,
    ) -> Result<(), HostError> {
        let names: Vec<&String> = match tar {
            true => self
                .manifest
                .keys()
                .filter(|k| !unchanged.contains(k))
                .collect(),
            false => Vec::new(),
        };
        let script = self.finish_script(id, carry, tar, !names.is_empty());
        let line = crate::hosting::ssh::remote_line(&Cmd::new("sh").args(["-c", &script]));
        let (remote, local) = if names.is_empty() {
            (self.ssh.run_line(&line, &[]).await?, None)
        } else {
            self.send_tar(&line, &names, to_send, progress).await?
        };
        if remote.success() && local.as_ref().is_none_or(|l| l.status.success()) {
            return Ok(());
        }
        Err(self.not_in_place(format!(
            "{}{}",
            local
                .map(|l| String::from_utf8_lossy(&l.stderr).into_owned())
                .unwrap_or_default(),
            remote.tail(3)
        )))
    }

    fn finish_script(&self, id: &str, carry: &Carry<'_>, tar: bool, untar: bool) -> String {
        let (r, p) = (quote(&self.releases), quote(&self.partial));
        let copy = |list: &str, prev: &str| {
            format!(
                " && (cd {prev} && xargs -0 cp -p --reflink=auto --parents -t ../{p} -- < {list})",
                prev = quote(prev)
            )
        };
        let mut script = format!("cd {r}");
        match carry {
            Carry::Nothing | Carry::Fresh => {}
            Carry::Listed(prev) => {
                let list = quote(&self.list_path());
                script.push_str(&copy(&list, prev));
                script.push_str(&format!(" && rm -f {list}"));
            }
            Carry::Edited { prev, changed, .. } => {
                script.push_str(&copy(FILES, prev));
                if !changed.is_empty() {
                    script.push_str(&format!(" && (cd {p} && rm -f --"));
                    for k in changed {
                        script.push(' ');
                        script.push_str(&quote(k));
                    }
                    script.push(')');
                }
            }
        }
        if untar {
            script.push_str(&format!(" && (cd {p} && tar -x -f - --no-same-owner)"));
        } else if !tar {
            // Without tar, symlinks are made here.
            for (k, e) in &self.manifest {
                if let Some(target) = &e.link {
                    script.push_str(&format!(" && ln -s -- {} {p}/{}", quote(target), quote(k)));
                }
            }
        }
        if let Carry::Edited {
            prev,
            script: sed,
            sha,
            ..
        } = carry
        {
            script.push_str(&format!(
                " && sed -e {sed} {prev}/{MANIFEST} > {p}/{MANIFEST} && (cd {p} && echo {check} | sha256sum -c --status || {{ echo {EDIT_FAILED} >&2; exit 3; }})",
                sed = quote(sed),
                prev = quote(prev),
                check = quote(&format!("{sha}  {MANIFEST}")),
            ));
        }
        if let Carry::Fresh = carry {
            let text = quote(&self.encoded);
            script.push_str(&format!(" && printf '%s' {text} > {p}/{MANIFEST}"));
        }
        script.push_str(&self.publish(id, tar));
        script
    }

    /// The end of the second command: the list of the release's files
    /// (with tar), then the partial directory synced and renamed.
    fn publish(&self, id: &str, tar: bool) -> String {
        let p = quote(&self.partial);
        let mut script = String::new();
        if tar {
            // The next upload copies what this list names (GNU find; a
            // host without it gets the names listed).
            script.push_str(&format!(
                " && (cd {p} && find . -type f ! -path ./{MANIFEST} ! -path ./{FILES} -printf '%P\\0' > {FILES} || rm -f {FILES})"
            ));
        }
        // On disk before the rename publishes the release.
        script.push_str(&format!(
            " && sync -f {p} && mv -T {p} {id} && sync -f .",
            id = quote(id)
        ));
        script
    }

    fn not_in_place(&self, output: String) -> HostError {
        HostError::Failed {
            doing: format!("putting the release in place on {}", self.host.name()),
            output,
        }
    }
}

/// Names as `xargs -0` and `tar --null -T -` read them.
fn nul_separated<'a>(names: impl IntoIterator<Item = &'a String>) -> Vec<u8> {
    let mut list = Vec::new();
    for k in names {
        list.extend_from_slice(k.as_bytes());
        list.push(0);
    }
    list
}

/// How long `s` is in the command line: quoted in the script, which is
/// quoted again as the command (each `'` grows at each quoting).
fn inline_len(s: &str) -> usize {
    quote(&quote(s)).len()
}

/// What the host says when the manifest it made is not the one expected.
const EDIT_FAILED: &str = "the manifest made from the previous one differs";
