//! The tar stream of an upload: made here by GNU tar as it is sent over
//! an exec channel, counted for the progress bar, and watched for a
//! connection that died.

use super::Upload;
use crate::hosting::host::{HostError, Progress};
use std::path::Path;

impl Upload<'_> {
    /// Runs `line` on the host with `names` streamed to it as one tar
    /// archive, made here by tar as it is sent (never whole in memory).
    pub(super) async fn send_tar(
        &self,
        line: &str,
        names: &[&String],
        to_send: u64,
        progress: &Progress<'_>,
    ) -> Result<(crate::support::cmd::CmdOutput, Option<std::process::Output>), HostError> {
        let list = super::nul_separated(names.iter().copied());
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
        run: impl std::future::Future<
            Output = Result<crate::support::cmd::CmdOutput, crate::hosting::ssh::SshError>,
        >,
        last_read: &std::sync::Mutex<std::time::Instant>,
    ) -> Result<crate::support::cmd::CmdOutput, HostError> {
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
pub(super) async fn local_gnu_tar() -> bool {
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
pub(super) struct Counted<'a, R> {
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
