//! The deploy lock on an SSH host: deployers on different machines never
//! interleave there.

use super::{Host, HostError};
use crate::cmd::{Cmd, quote};
use crate::lock::Holder;
use crate::release::ServiceDirs;

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
            .map_err(HostError::from)?;
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
                        .map_err(HostError::from)?;
                    if out.success() {
                        Ok(Some(format!("{h} (its process has exited)")))
                    } else {
                        Err(RemoteLockError::Failed(HostError::Failed {
                            doing: format!("taking over the lock on {}", self.name()),
                            output: out.tail(3),
                        }))
                    }
                }
                Ok(h) => Err(RemoteLockError::Busy(h.to_string())),
                Err(_) => Err(RemoteLockError::Busy("holder unknown".to_string())),
            },
            _ => Err(RemoteLockError::Failed(HostError::Failed {
                doing: format!("taking the lock on {}", self.name()),
                output: out.tail(3),
            })),
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
}
