//! The deploy lock on an SSH host: deployers on different machines never
//! interleave there.

use super::{Host, HostError};
use crate::hosting::release::ServiceDirs;
use crate::support::cmd::{Cmd, quote};
use crate::support::flock::Holder;

/// Why the lock on a host was not taken.
#[derive(Debug, thiserror::Error)]
pub enum RemoteLockError {
    /// Another deployer holds it (who).
    #[error("locked by {0}")]
    Busy(String),
    #[error(transparent)]
    Failed(#[from] HostError),
}

/// A remote lock not refreshed for this long belongs to a dead deployer.
pub const REMOTE_LOCK_STALE_SECS: u64 = 90;

impl Host {
    /// Takes the deploy lock on an SSH host, so deployers on different
    /// machines never interleave: `mkdir` of `deploy.lock.d` is atomic, and
    /// `holder.json` in it (written to a temporary name, then renamed)
    /// names the holder. The holder touches it while it works
    /// ([`Host::heartbeat`]); a lock not touched for
    /// [`REMOTE_LOCK_STALE_SECS`] belongs to a deployer that died and is
    /// taken over: under a second `mkdir` (`.takeover`), so of two
    /// deployers taking over at once exactly one wins, and it checks the
    /// age again before writing its own record. Returns the stale holder
    /// taken over, if any. On this machine the local flock already covers
    /// this, so it does nothing.
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
             holder=$(cat)\n\
             put() {{ printf '%s\\n' \"$holder\" > {d}/.holder.$$ && mv -f {d}/.holder.$$ {d}/holder.json; }}\n\
             age() {{ echo $(( $(date +%s) - $(stat -c %Y {d}/holder.json 2>/dev/null || stat -c %Y {d} 2>/dev/null || date +%s) )); }}\n\
             if mkdir {d} 2>/dev/null; then put || exit 4; echo acquired; exit 0; fi\n\
             if [ -d {d}/.takeover ] && [ $(( $(date +%s) - $(stat -c %Y {d}/.takeover 2>/dev/null || date +%s) )) -gt {stale} ]; then rmdir {d}/.takeover 2>/dev/null; fi\n\
             if [ \"$(age)\" -gt {stale} ] && mkdir {d}/.takeover 2>/dev/null; then\n\
               if [ \"$(age)\" -gt {stale} ]; then old=$(cat {d}/holder.json 2>/dev/null); put || exit 4; rmdir {d}/.takeover; echo \"stale $old\"; exit 0; fi\n\
               rmdir {d}/.takeover\n\
             fi\n\
             cat {d}/holder.json 2>/dev/null; exit 3\n",
            root = quote(&dirs.root.to_string_lossy()),
            stale = REMOTE_LOCK_STALE_SECS,
        );
        let out = self.lock_script(s, &script, holder).await?;
        match out.code {
            Some(0) => Ok(out.stdout.trim().strip_prefix("stale ").map(str::to_string)),
            Some(3) => match serde_json::from_str::<Holder>(out.stdout.trim()) {
                // A deployer on this machine that has exited (its connection
                // broke before it could unlock): no need to wait it out.
                Ok(h) if holder_is_dead(&h) => self.take_from_dead(s, dirs, holder, &h).await,
                Ok(h) => Err(RemoteLockError::Busy(h.to_string())),
                Err(_) => Err(RemoteLockError::Busy("holder unknown".to_string())),
            },
            _ => Err(RemoteLockError::Failed(HostError::Failed {
                doing: format!("taking the lock on {}", self.name()),
                output: out.tail(3),
            })),
        }
    }

    async fn lock_script(
        &self,
        s: &crate::hosting::ssh::SshSession,
        script: &str,
        holder: &Holder,
    ) -> Result<crate::support::cmd::CmdOutput, HostError> {
        let cmd = Cmd::new("sh").args(["-c", script]);
        let body = serde_json::to_string(holder).unwrap_or_default();
        Ok(
            s.run_line(&crate::hosting::ssh::remote_line(&cmd), body.as_bytes())
                .await?,
        )
    }

    /// Replaces the record of a holder whose process has exited, only if it
    /// is still that holder's.
    async fn take_from_dead(
        &self,
        s: &crate::hosting::ssh::SshSession,
        dirs: &ServiceDirs,
        holder: &Holder,
        dead: &Holder,
    ) -> Result<Option<String>, RemoteLockError> {
        let d = quote(&dirs.root.join("deploy.lock.d").to_string_lossy());
        let script = format!(
            "holder=$(cat)\n\
             mkdir {d}/.takeover 2>/dev/null || exit 3\n\
             if grep -qF {mark} {d}/holder.json; then printf '%s\\n' \"$holder\" > {d}/.holder.$$ && mv -f {d}/.holder.$$ {d}/holder.json; r=$?; else r=3; fi\n\
             rmdir {d}/.takeover; exit $r\n",
            mark = quote(&job_mark(dead)),
        );
        let out = self.lock_script(s, &script, holder).await?;
        match out.code {
            Some(0) => Ok(Some(format!("{dead} (its process has exited)"))),
            Some(3) => Err(RemoteLockError::Busy(dead.to_string())),
            _ => Err(RemoteLockError::Failed(HostError::Failed {
                doing: format!("taking over the lock on {}", self.name()),
                output: out.tail(3),
            })),
        }
    }

    /// Keeps a held remote lock fresh; an error when it is no longer ours
    /// (it went stale and another deployer took it over).
    pub async fn heartbeat(&self, dirs: &ServiceDirs, holder: &Holder) -> Result<(), HostError> {
        if self.is_local() {
            return Ok(());
        }
        let f = quote(
            &dirs
                .root
                .join("deploy.lock.d/holder.json")
                .to_string_lossy(),
        );
        self.sh(&format!(
            "grep -qF {mark} {f} && touch {f}",
            mark = quote(&job_mark(holder))
        ))
        .await
        .map(|_| ())
        .map_err(|_| HostError::Failed {
            doing: format!("refreshing the lock on {}", self.name()),
            output: format!("the lock is no longer held by job {}", holder.job_id),
        })
    }

    /// Releases a held remote lock, only if it is still ours: a deployer
    /// cut off long enough for its lock to be taken over never removes its
    /// successor's.
    pub async fn unlock(&self, dirs: &ServiceDirs, holder: &Holder) {
        if !self.is_local() {
            let d = quote(&dirs.root.join("deploy.lock.d").to_string_lossy());
            let _ = self
                .sh(&format!(
                    "if grep -qF {mark} {d}/holder.json 2>/dev/null; then rm -rf {d}; fi",
                    mark = quote(&job_mark(holder))
                ))
                .await;
        }
    }
}

/// How a holder's record is recognised: its job id, as serialized.
fn job_mark(holder: &Holder) -> String {
    format!("\"job_id\":\"{}\"", holder.job_id)
}
