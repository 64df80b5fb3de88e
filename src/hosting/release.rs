//! Releases on disk. Each deploy copies the service into its own directory
//! under `services/NAME/releases/ID`; `services/NAME/current` is a symlink
//! switched atomically (a new link renamed over the old) only after health
//! passes, so `current` always names a complete, healthy release.
//!
//! ```text
//! STATE_DIR/services/NAME/
//!   releases/20261125-131500-1a2b3c4d/   the files of one release
//!   current -> releases/20261125-…        the release that serves
//!   logs/RELEASE.log                      process output, per release
//!   run/RELEASE.pid                       process id, per release
//!   deploy.lock                           held while a job runs
//! ```

use crate::model::TransferStats;
use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Directory names never copied into a release.
const ALWAYS_IGNORED: [&str; 2] = [".git", ".deployer"];

/// A file in a service directory listing what not to deploy, in
/// `.gitignore` syntax; `.gitignore` files are honoured too.
pub const DEPLOYIGNORE: &str = ".deployignore";

/// The paths of one service's state.
#[derive(Clone, Debug)]
pub struct ServiceDirs {
    pub root: PathBuf,
}

impl ServiceDirs {
    pub fn new(state_dir: &Path, service: &str) -> Self {
        ServiceDirs {
            root: state_dir.join("services").join(service),
        }
    }

    pub fn releases(&self) -> PathBuf {
        self.root.join("releases")
    }

    pub fn release(&self, id: &str) -> PathBuf {
        self.releases().join(id)
    }

    pub fn current_link(&self) -> PathBuf {
        self.root.join("current")
    }

    pub fn log_file(&self, id: &str) -> PathBuf {
        self.root.join("logs").join(format!("{id}.log"))
    }

    pub fn pid_file(&self, id: &str) -> PathBuf {
        self.root.join("run").join(format!("{id}.pid"))
    }

    /// A release's environment values, kept only in deployer's own state
    /// directory (mode 0600): the store and the API hold their names only.
    pub fn env_values_file(&self, id: &str) -> PathBuf {
        self.root.join("env").join(format!("{id}.json"))
    }

    /// Keeps a release's environment values for a later rollback.
    pub fn save_env_values(&self, id: &str, env: &BTreeMap<String, String>) -> io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.env_values_file(id);
        if let Some(dir) = path.parent() {
            crate::support::private_dir(dir)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(&serde_json::to_vec(env).unwrap_or_default())?;
        f.sync_all()
    }

    /// A release's environment values, if this machine kept them.
    pub fn env_values(&self, id: &str) -> Option<BTreeMap<String, String>> {
        let bytes = std::fs::read(self.env_values_file(id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn remove_env_values(&self, id: &str) {
        let _ = std::fs::remove_file(self.env_values_file(id));
    }

    pub fn lock_file(&self) -> PathBuf {
        self.root.join("deploy.lock")
    }

    /// On a host: the time (Unix seconds) a draining release stops by.
    pub fn drain_file(&self, id: &str) -> PathBuf {
        self.root.join("run").join(format!("{id}.drain"))
    }

    /// In deployer's own state: the latest time a drain of this service
    /// (on any of its hosts) ends, so a later command, or `serve`'s timer,
    /// knows to look whether it did.
    fn drain_marker(&self) -> PathBuf {
        self.root.join("draining")
    }

    fn drain_until(&self) -> Option<i64> {
        std::fs::read_to_string(self.drain_marker())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Remembers that a drain ends by `until`.
    pub fn note_drain(&self, until: i64) -> io::Result<()> {
        let until = self.drain_until().map_or(until, |u| u.max(until));
        let tmp = self.root.join(".draining.tmp");
        std::fs::write(&tmp, until.to_string())?;
        std::fs::rename(tmp, self.drain_marker())
    }

    /// Whether a drain should have ended (a few seconds' slack for the
    /// drainer on the host itself).
    pub fn drain_overdue(&self) -> bool {
        self.drain_until()
            .is_some_and(|u| u + 5 < chrono::Utc::now().timestamp())
    }

    /// After a sweep: forgets drains that have ended by now.
    pub fn forget_drains(&self) {
        if self
            .drain_until()
            .is_some_and(|u| u <= chrono::Utc::now().timestamp())
        {
            let _ = std::fs::remove_file(self.drain_marker());
        }
    }

    /// Services (under a state directory) with an overdue drain.
    pub fn services_draining_overdue(state_dir: &Path) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(state_dir.join("services")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|s| ServiceDirs::new(state_dir, s).drain_overdue())
            .collect()
    }

    /// The release `current` points at, if any.
    pub fn current(&self) -> Option<String> {
        let target = std::fs::read_link(self.current_link()).ok()?;
        let id = target.file_name()?.to_str()?.to_string();
        self.release(&id).is_dir().then_some(id)
    }

    /// Points `current` at a release atomically: a new symlink is made beside
    /// the old one and renamed over it, so readers see the old or the new
    /// release, never a missing or half-written link.
    pub fn switch_current(&self, id: &str) -> io::Result<()> {
        if !self.release(id).is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("release {id} has no directory"),
            ));
        }
        let tmp = self
            .root
            .join(format!(".current.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("releases").join(id), &tmp)?;
        std::fs::rename(&tmp, self.current_link())?;
        sync_dir(&self.root);
        Ok(())
    }

    /// Removes a release's files and its pid file (logs stay).
    pub fn remove_release(&self, id: &str) -> io::Result<()> {
        let _ = std::fs::remove_file(self.pid_file(id));
        match std::fs::remove_dir_all(self.release(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// A release id: UTC time to the millisecond plus the first 8 hex digits of
/// the content hash, so ids sort by time and show what changed.
/// Whether `s` has the shape [`new_release_id`] gives: `YYYYMMDD-HHMMSSmmm-`
/// and 8 hex digits, perhaps `-N` after. Another service whose name starts
/// with this one's (`api` and `api-v2`) never has this shape after `api-`.
pub fn is_release_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let digits = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_digit());
    let hex = |p: &str| p.len() == 8 && p.bytes().all(|b| b.is_ascii_hexdigit());
    match parts.as_slice() {
        [d, t, h] => digits(d, 8) && digits(t, 9) && hex(h),
        [d, t, h, n] => {
            digits(d, 8)
                && digits(t, 9)
                && hex(h)
                && !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
        }
        _ => false,
    }
}

pub fn new_release_id(content_hash: &str, dirs: &ServiceDirs) -> String {
    let now = chrono::Utc::now();
    let base = format!("{}-{}", now.format("%Y%m%d-%H%M%S%3f"), &content_hash[..8]);
    let mut id = base.clone();
    let mut n = 1;
    while dirs.release(&id).exists() {
        id = format!("{base}-{n}");
        n += 1;
    }
    id
}

/// The files of a service directory that belong in a release, sorted:
/// everything but what `.deployignore` and `.gitignore` exclude (with git's
/// rules, whether or not the directory is a git checkout), `.git` and
/// deployer's own state.
pub fn release_files(src: &Path) -> io::Result<Vec<PathBuf>> {
    let walker = ignore::WalkBuilder::new(src)
        .hidden(false)
        .parents(false)
        .git_global(false)
        .git_exclude(false)
        .require_git(false)
        .add_custom_ignore_filename(DEPLOYIGNORE)
        .filter_entry(|e| !ALWAYS_IGNORED.iter().any(|i| e.file_name() == *i))
        .build();
    let mut out = Vec::new();
    for entry in walker {
        let entry = entry.map_err(io::Error::other)?;
        let Some(ft) = entry.file_type() else {
            continue;
        };
        if ft.is_file() || ft.is_symlink() {
            let rel = entry.path().strip_prefix(src).map_err(io::Error::other)?;
            out.push(rel.to_path_buf());
        }
    }
    out.sort();
    Ok(out)
}

/// A blake3 hash over every file's path, mode and contents.
/// [`content_hash`] on a blocking thread, so hashing a big release never
/// stalls another job's health checks.
pub async fn content_hash_off_thread(src: &Path) -> io::Result<String> {
    let src = src.to_path_buf();
    tokio::task::spawn_blocking(move || content_hash(&src))
        .await
        .map_err(io::Error::other)?
}

pub fn content_hash(src: &Path) -> io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    for rel in release_files(src)? {
        let path = src.join(&rel);
        let meta = std::fs::symlink_metadata(&path)?;
        hasher.update(rel.to_string_lossy().as_bytes());
        hasher.update(&[0]);
        hasher.update(&meta.permissions().mode().to_le_bytes());
        if meta.file_type().is_symlink() {
            hasher.update(std::fs::read_link(&path)?.to_string_lossy().as_bytes());
        } else {
            hasher.update_reader(std::fs::File::open(&path)?)?;
        }
        hasher.update(&[0]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// Copies a service directory into a new release directory. The copy goes to
/// a hidden `.ID.partial` directory first and is renamed into place, so a
/// release directory is either complete or absent. File modes are kept.
pub fn copy_release(src: &Path, dirs: &ServiceDirs, id: &str) -> io::Result<TransferStats> {
    let releases = dirs.releases();
    std::fs::create_dir_all(&releases)?;
    let partial = releases.join(format!(".{id}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial)?;
    let result = (|| {
        let mut stats = TransferStats::default();
        for rel in release_files(src)? {
            let from = src.join(&rel);
            let to = partial.join(&rel);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let meta = std::fs::symlink_metadata(&from)?;
            if meta.file_type().is_symlink() {
                std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
            } else {
                let n = std::fs::copy(&from, &to)?;
                std::fs::set_permissions(&to, meta.permissions())?;
                // On disk before the rename publishes the release: a crash
                // never leaves a release with empty or torn files.
                std::fs::File::open(&to)?.sync_all()?;
                stats.bytes += n;
                stats.uploaded_bytes += n;
                stats.uploaded_files += 1;
            }
            stats.files += 1;
        }
        std::fs::rename(&partial, dirs.release(id))?;
        std::fs::File::open(&releases)?.sync_all()?;
        Ok(stats)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_keeps_modes_and_switch_is_atomic() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            src.path().join("run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::create_dir(src.path().join(".git")).unwrap();
        std::fs::write(src.path().join(".git/HEAD"), "x").unwrap();
        let state = tempfile::tempdir().unwrap();
        let dirs = ServiceDirs::new(state.path(), "svc");
        let hash = content_hash(src.path()).unwrap();
        let id = new_release_id(&hash, &dirs);
        let stats = copy_release(src.path(), &dirs, &id).unwrap();
        assert_eq!(stats.files, 1, ".git is not copied");
        let mode = std::fs::metadata(dirs.release(&id).join("run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(dirs.current(), None);
        dirs.switch_current(&id).unwrap();
        assert_eq!(dirs.current().as_deref(), Some(id.as_str()));
        assert!(dirs.switch_current("missing").is_err());
        assert_eq!(dirs.current().as_deref(), Some(id.as_str()));
    }

    #[test]
    fn deployignore_and_gitignore_are_honoured() {
        let src = tempfile::tempdir().unwrap();
        let p = src.path();
        std::fs::create_dir_all(p.join("node_modules/x")).unwrap();
        std::fs::create_dir_all(p.join("logs")).unwrap();
        std::fs::write(p.join("node_modules/x/a.js"), "").unwrap();
        std::fs::write(p.join("logs/today.log"), "").unwrap();
        std::fs::write(p.join("app.py"), "").unwrap();
        std::fs::write(p.join("keep.log"), "").unwrap();
        std::fs::write(p.join("secret.env"), "").unwrap();
        std::fs::write(p.join(".gitignore"), "node_modules/\n*.log\n!keep.log\n").unwrap();
        std::fs::write(p.join(DEPLOYIGNORE), "secret.env\n").unwrap();
        let files: Vec<String> = release_files(p)
            .unwrap()
            .iter()
            .map(|f| f.to_string_lossy().into_owned())
            .collect();
        assert_eq!(files, [".deployignore", ".gitignore", "app.py", "keep.log"]);
    }

    #[test]
    fn hash_changes_with_content_and_mode() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("a"), "1").unwrap();
        let h1 = content_hash(src.path()).unwrap();
        std::fs::set_permissions(src.path().join("a"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        let h2 = content_hash(src.path()).unwrap();
        std::fs::write(src.path().join("a"), "2").unwrap();
        let h3 = content_hash(src.path()).unwrap();
        assert!(h1 != h2 && h2 != h3);
    }
}
