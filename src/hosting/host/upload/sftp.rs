//! The SFTP side of an upload: file by file for hosts without GNU tar,
//! and the lists and manifests too long for a command line.

use super::Upload;
use crate::hosting::host::{HostError, Progress};
use std::collections::BTreeSet;

impl Upload<'_> {
    /// Sends what changed file by file over SFTP, for hosts without GNU
    /// tar.
    pub(super) async fn send_sftp(
        &self,
        sftp: &russh_sftp::client::SftpSession,
        unchanged: &BTreeSet<&String>,
        to_send: u64,
        progress: &Progress<'_>,
    ) -> Result<(), HostError> {
        let dir = format!("{}/{}", self.releases, self.partial);
        let mut sent = 0;
        for (k, e) in &self.manifest {
            let dest = format!("{dir}/{k}");
            // Symlinks are made by `finish` (OpenSSH's SFTP server takes
            // a symlink's two paths the other way round).
            if e.link.is_some() || unchanged.contains(k) {
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
