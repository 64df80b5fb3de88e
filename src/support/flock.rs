//! The per-service deploy lock: two jobs of one service never interleave.
//!
//! It is an advisory `flock` on `services/NAME/deploy.lock`. The kernel drops
//! the lock when its holder dies, so a lock held by a dead process is taken
//! over by the next job without guessing from pids or ages. The file's
//! contents name the holder (job, pid, user, since when) so a refused job can
//! say who holds the lock.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Who holds a lock.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Holder {
    pub job_id: String,
    pub pid: u32,
    pub actor: String,
    pub since: chrono::DateTime<chrono::Utc>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "job {} (pid {}, {}, since {})",
            self.job_id,
            self.pid,
            self.actor,
            self.since.format("%Y-%m-%d %H:%M:%S UTC")
        )
    }
}

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct Lock {
    file: File,
    /// The holder found in the file when the lock was taken, if its process
    /// had died without releasing it cleanly (the lock was taken over).
    pub took_over: Option<Holder>,
}

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another deploy of this service is running: {0}")]
    Busy(String),
    #[error("lock file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl Lock {
    /// Takes the lock, waiting up to `wait` for a live holder to finish.
    pub async fn acquire(path: &Path, holder: &Holder, wait: Duration) -> Result<Lock, LockError> {
        let io_err = |source| LockError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io_err)?;
        let deadline = Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    if Instant::now() >= deadline {
                        // The holder writes its record just after taking the
                        // lock; give it a moment to appear.
                        let mut who = None;
                        for _ in 0..25 {
                            who = read_holder(&mut file);
                            if who.is_some() {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        let who = who
                            .map(|h| h.to_string())
                            .unwrap_or_else(|| "holder unknown".to_string());
                        return Err(LockError::Busy(who));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(TryLockError::Error(e)) => return Err(io_err(e)),
            }
        }
        let took_over = read_holder(&mut file).filter(|h| h.pid != std::process::id());
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        file.write_all(serde_json::to_string(holder).unwrap_or_default().as_bytes())
            .map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        Ok(Lock { file, took_over })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // An empty file says "free" to anyone reading it; the kernel releases
        // the flock itself when the file is closed.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// Whether a process with this pid exists on this machine.
pub fn pid_alive(pid: u32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks for existence.
    let r = unsafe { libc::kill(pid as i32, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(job: &str) -> Holder {
        Holder {
            job_id: job.into(),
            pid: std::process::id(),
            actor: "test".into(),
            since: chrono::Utc::now(),
        }
    }

    #[tokio::test]
    async fn second_is_refused_naming_holder_then_free_after_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deploy.lock");
        let first = Lock::acquire(&path, &holder("deploy-one"), Duration::ZERO)
            .await
            .unwrap();
        let err = Lock::acquire(&path, &holder("deploy-two"), Duration::from_millis(120))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("job deploy-one"), "{err}");
        drop(first);
        Lock::acquire(&path, &holder("deploy-two"), Duration::ZERO)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn lock_of_dead_holder_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deploy.lock");
        // A holder that died leaves its record behind but no flock.
        let dead = Holder {
            pid: 999_999,
            ..holder("deploy-dead")
        };
        std::fs::write(&path, serde_json::to_string(&dead).unwrap()).unwrap();
        let lock = Lock::acquire(&path, &holder("deploy-next"), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(
            lock.took_over.as_ref().map(|h| h.job_id.clone()),
            Some("deploy-dead".to_string())
        );
    }
}
