//! Backups on the target: each in `BASE/NAME/backups/ID/` (ID = time and
//! the release it was taken from), every dump and archive zstd-compressed,
//! tested and checksummed (`SHA256SUMS`) before it is published by a
//! rename; rotated by count and age. The commands run on the target as
//! shell scripts, with the service's environment and secrets.

use crate::hosting::host::{Host, HostError};
use crate::hosting::release::ServiceDirs;
use crate::model::BackupSpec;
use crate::support::cmd::{Cmd, quote};
use crate::support::secret::Secret;
use std::time::Duration;

/// How long a backup or a restore may take.
const BACKUP_TIMEOUT: Duration = Duration::from_secs(3600);

/// One backup, as `deployer backups` lists it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BackupInfo {
    pub id: String,
    pub path: String,
    pub size: u64,
    pub created_at: String,
    /// The release that was current when it was taken.
    pub release: String,
}

/// Why a backup or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("{doing} failed (exit {code}):\n{output}")]
    Failed {
        doing: String,
        code: String,
        output: String,
    },
    #[error("no backup {0}")]
    NotFound(String),
}

/// The environment backup commands run with: the service's variables and
/// its secrets (a dump needs the database's credentials).
pub struct BackupEnv {
    pub env: Vec<(String, String)>,
    pub secrets: Vec<(String, Secret)>,
}

fn dir_of(dirs: &ServiceDirs) -> String {
    dirs.root.join("backups").to_string_lossy().into_owned()
}

/// A backup id: `YYYYmmdd-HHMMSSmmm-RELEASE` (milliseconds, so a snapshot
/// right after a deploy's backup gets its own).
pub fn new_id(release: Option<&str>) -> String {
    format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%d-%H%M%S%3f"),
        release.unwrap_or("none")
    )
}

/// Where the time ends and the release begins in an id.
const TIME_LEN: usize = 18;

/// The script that takes a backup into `.ID.partial`, checks it, and
/// publishes it as `ID`.
fn backup_script(dirs: &ServiceDirs, id: &str, spec: &BackupSpec) -> String {
    let root = quote(&dirs.root.to_string_lossy());
    let b = quote(&dir_of(dirs));
    let mut s = format!(
        "set -e\numask 077\nmkdir -p {b}\nd={b}/{p}\nrm -rf \"$d\"\nmkdir \"$d\"\ncd {root}\n",
        p = quote(&format!(".{id}.partial")),
    );
    for c in &spec.commands {
        let name = &c.name;
        // To a file first: `sh` has no pipefail, and a failed dump must fail.
        s.push_str(&format!(
            "echo \"dump {name}\" >&2\n( {dump} ) > \"$d/{name}.raw\"\nzstd -q --rm \"$d/{name}.raw\" -o \"$d/{name}.zst\"\n",
            dump = c.dump
        ));
        if let Some(v) = &c.verify {
            s.push_str(&format!(
                "echo \"verify {name}\" >&2\nzstd -dc \"$d/{name}.zst\" | ( {v} ) >/dev/null\n"
            ));
        }
    }
    if !spec.paths.is_empty() {
        let paths: Vec<String> = spec.paths.iter().map(|p| quote(p)).collect();
        s.push_str(&format!(
            "tar -cf \"$d/files.tar\" {}\nzstd -q --rm \"$d/files.tar\" -o \"$d/files.tar.zst\"\n",
            paths.join(" ")
        ));
    }
    s.push_str(&format!(
        "cd \"$d\"\nif ls *.zst >/dev/null 2>&1; then zstd -tq *.zst; sha256sum *.zst > SHA256SUMS; sha256sum -c --quiet SHA256SUMS; else : > SHA256SUMS; fi\n\
         cd {b}\nmv -T {p} {id}\ndu -sb {id} | cut -f1\n",
        p = quote(&format!(".{id}.partial")),
        id = quote(id),
    ));
    s
}

/// The script that checks a backup's checksums and puts it back.
fn restore_script(dirs: &ServiceDirs, id: &str, spec: &BackupSpec) -> String {
    let root = quote(&dirs.root.to_string_lossy());
    let d = quote(&format!("{}/{id}", dir_of(dirs)));
    let mut s = format!("set -e\ncd {d}\nsha256sum -c --quiet SHA256SUMS\n");
    for c in &spec.commands {
        if let Some(r) = &c.restore {
            let name = &c.name;
            s.push_str(&format!(
                "echo \"restore {name}\" >&2\nzstd -dc {d}/{name}.zst | ( cd {root} && {r} )\n"
            ));
        }
    }
    if !spec.paths.is_empty() {
        s.push_str(&format!(
            "zstd -dc {d}/files.tar.zst | tar -C {root} -xf -\n"
        ));
    }
    s
}

async fn run_script(
    host: &Host,
    script: &str,
    env: &BackupEnv,
    doing: &str,
) -> Result<String, BackupError> {
    let mut cmd = Cmd::new("sh").args(["-c", script]);
    for (k, v) in &env.env {
        cmd = cmd.env(k, v);
    }
    for (k, v) in &env.secrets {
        cmd = cmd.secret_env(k.clone(), v.clone());
    }
    let out = host.run(&cmd, BACKUP_TIMEOUT).await?;
    if out.success() {
        return Ok(out.stdout);
    }
    Err(BackupError::Failed {
        doing: doing.to_string(),
        code: out
            .code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "signal".into()),
        output: out.tail(10),
    })
}

/// Takes a backup, checks it, publishes it, then rotates the old ones.
/// Returns the new backup.
pub async fn take(
    host: &Host,
    dirs: &ServiceDirs,
    spec: &BackupSpec,
    release: Option<&str>,
    env: &BackupEnv,
) -> Result<BackupInfo, BackupError> {
    let id = new_id(release);
    let out = run_script(host, &backup_script(dirs, &id, spec), env, "the backup").await?;
    rotate(host, dirs, spec).await?;
    Ok(BackupInfo {
        path: format!("{}/{id}", dir_of(dirs)),
        size: out.trim().parse().unwrap_or(0),
        created_at: created_at(&id),
        release: release.unwrap_or("none").to_string(),
        id,
    })
}

/// Puts a backup back.
pub async fn restore(
    host: &Host,
    dirs: &ServiceDirs,
    spec: &BackupSpec,
    id: &str,
    env: &BackupEnv,
) -> Result<(), BackupError> {
    if !list(host, dirs).await?.iter().any(|b| b.id == id) {
        return Err(BackupError::NotFound(id.to_string()));
    }
    run_script(host, &restore_script(dirs, id, spec), env, "the restore").await?;
    Ok(())
}

fn created_at(id: &str) -> String {
    chrono::NaiveDateTime::parse_from_str(id.get(..TIME_LEN).unwrap_or(""), "%Y%m%d-%H%M%S%3f")
        .map(|t| {
            t.and_utc()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
        .unwrap_or_default()
}

/// The service's backups, oldest first.
pub async fn list(host: &Host, dirs: &ServiceDirs) -> Result<Vec<BackupInfo>, BackupError> {
    let b = quote(&dir_of(dirs));
    let script = format!(
        "cd {b} 2>/dev/null || exit 0\nfor d in *; do [ -d \"$d\" ] && [ -f \"$d/SHA256SUMS\" ] && echo \"$(du -sb \"$d\" | cut -f1) $d\"; done; true"
    );
    let out = host
        .run(&Cmd::new("sh").args(["-c", &script]), BACKUP_TIMEOUT)
        .await?;
    let mut found: Vec<BackupInfo> = out
        .stdout
        .lines()
        .filter_map(|l| {
            let (size, id) = l.split_once(' ')?;
            Some(BackupInfo {
                id: id.to_string(),
                path: format!("{}/{id}", dir_of(dirs)),
                size: size.parse().ok()?,
                created_at: created_at(id),
                release: id.get(TIME_LEN + 1..).unwrap_or("").to_string(),
            })
        })
        .collect();
    found.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(found)
}

/// Removes backups beyond `keep` (default 7) and older than `max_age_days`;
/// the newest is always kept.
async fn rotate(host: &Host, dirs: &ServiceDirs, spec: &BackupSpec) -> Result<(), BackupError> {
    let all = list(host, dirs).await?;
    let keep = spec.keep.unwrap_or(7).max(1);
    let cutoff = spec
        .max_age_days
        .map(|d| chrono::Utc::now() - chrono::Duration::days(d as i64));
    let n = all.len();
    let doomed: Vec<String> = all
        .iter()
        .enumerate()
        .filter(|(i, b)| {
            let newest = *i + 1 == n;
            let beyond_count = *i + keep < n;
            let too_old = cutoff.is_some_and(|c| {
                chrono::DateTime::parse_from_rfc3339(&b.created_at).is_ok_and(|t| t < c)
            });
            !newest && (beyond_count || too_old)
        })
        .map(|(_, b)| quote(&b.path))
        .collect();
    if !doomed.is_empty() {
        let cmd = Cmd::new("sh").args(["-c", &format!("rm -rf {}", doomed.join(" "))]);
        host.run(&cmd, BACKUP_TIMEOUT).await?;
    }
    Ok(())
}
