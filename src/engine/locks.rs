//! The two locks a job holds: the service's `flock` on this machine (two
//! jobs of one service never interleave here), and on each SSH host a lock
//! directory (deployers on different machines never interleave there),
//! refreshed while the job runs.

use super::Engine;
use crate::hosting::host::RemoteLockError;
use crate::hosting::release::ServiceDirs;
use crate::hosting::site::Site;
use crate::support::error::{Failure, FailureKind};
use crate::support::flock::{Holder, Lock, LockError};
use chrono::Utc;
use std::time::Duration;

/// How often a held host lock is refreshed.
const HEARTBEAT: Duration = Duration::from_secs(20);

impl Engine {
    fn holder(&self, job_id: &str) -> Holder {
        Holder {
            job_id: job_id.to_string(),
            pid: std::process::id(),
            actor: self.actor.clone(),
            since: Utc::now(),
        }
    }

    /// Takes a service's deploy lock for a job, or says who holds it.
    pub(super) async fn lock(&self, service: &str, job_id: &str) -> Result<Lock, Failure> {
        self.lock_within(service, job_id, self.lock_wait).await
    }

    /// Takes a service's lock when no one holds it, without waiting.
    pub(super) async fn try_lock(&self, service: &str) -> Result<Lock, Failure> {
        self.lock_within(service, "recovery", Duration::ZERO).await
    }

    async fn lock_within(
        &self,
        service: &str,
        job_id: &str,
        wait: Duration,
    ) -> Result<Lock, Failure> {
        let dirs = ServiceDirs::new(&self.state_dir, service);
        Lock::acquire(&dirs.lock_file(), &self.holder(job_id), wait)
            .await
            .map_err(|e| match e {
                LockError::Busy(who) => Failure::new(
                    FailureKind::Locked,
                    format!(
                        "service '{service}' is locked by another deploy: {who}; try again when it finishes, or pass --wait SECONDS"
                    ),
                ),
                other => Failure::internal(other.to_string()),
            })
    }

    /// Takes the lock on every host, all or nothing, and keeps them fresh
    /// until [`HostLocks::release`]. Returns notes on stale locks taken over.
    pub(super) async fn lock_hosts<'a>(
        &self,
        sites: &'a [Site],
        service: &str,
        job_id: &str,
    ) -> Result<(HostLocks<'a>, Vec<String>), Failure> {
        let holder = self.holder(job_id);
        let mut notes = Vec::new();
        let dead = |h: &Holder| h.actor == self.actor && !crate::support::flock::pid_alive(h.pid);
        for (i, site) in sites.iter().enumerate() {
            match site.host.lock(&site.dirs(service), &holder, dead).await {
                Ok(Some(old)) => notes.push(format!(
                    "took over a stale lock on {}: {old}",
                    site.host.name()
                )),
                Ok(None) => {}
                Err(e) => {
                    unlock(&sites[..i], service, &holder).await;
                    return Err(match e {
                        RemoteLockError::Busy(who) => Failure::new(
                            FailureKind::Locked,
                            format!(
                                "service '{service}' on {} is locked by another deployer: {who}",
                                site.host.name()
                            ),
                        ),
                        RemoteLockError::Failed(e) => {
                            Failure::new(FailureKind::Unreachable, e.to_string())
                        }
                    });
                }
            }
        }
        // A deployer that dies stops refreshing; the next one takes over.
        let beats: Vec<_> = sites
            .iter()
            .map(|s| (s.host.clone(), s.dirs(service)))
            .collect();
        let failures = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (beat_holder, seen) = (holder.clone(), failures.clone());
        let heartbeat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                for (host, dirs) in &beats {
                    if let Err(e) = host.heartbeat(dirs, &beat_holder).await {
                        seen.lock().unwrap().push(e.to_string());
                    }
                }
            }
        });
        let locks = HostLocks {
            sites,
            service: service.to_string(),
            holder,
            heartbeat,
            failures,
        };
        Ok((locks, notes))
    }
}

/// The hosts' locks of a running job.
pub(super) struct HostLocks<'a> {
    sites: &'a [Site],
    service: String,
    holder: Holder,
    heartbeat: tokio::task::JoinHandle<()>,
    /// Refreshes that failed (the lock was no longer ours).
    failures: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl HostLocks<'_> {
    /// Releases the locks still ours; returns the refreshes that failed.
    pub async fn release(self) -> Vec<String> {
        self.heartbeat.abort();
        unlock(self.sites, &self.service, &self.holder).await;
        std::mem::take(&mut *self.failures.lock().unwrap())
    }
}

async fn unlock(sites: &[Site], service: &str, holder: &Holder) {
    for s in sites {
        s.host.unlock(&s.dirs(service), holder).await;
    }
}
