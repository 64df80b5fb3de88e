//! Git-driven releases: a release that is exactly one commit's tree (the
//! ops seed's git-sync: commit, push, deploy what was pushed). The tree is
//! exported with `git archive` into a directory deployer then transfers
//! like any other release, so uploads stay incremental.

use crate::model::CommitInfo;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A git command that failed, with what it said.
#[derive(Debug, thiserror::Error)]
#[error("git {doing}: {output}")]
pub struct GitError {
    pub doing: String,
    pub output: String,
}

fn git(dir: &Path, args: &[&str], doing: &str) -> Result<String, GitError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .map_err(|e| GitError {
            doing: doing.to_string(),
            output: e.to_string(),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(GitError {
            doing: doing.to_string(),
            output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Whether `dir` is a bare repository (a hook's, where pushes arrive).
pub fn is_bare(dir: &Path) -> bool {
    git(
        dir,
        &["rev-parse", "--is-bare-repository"],
        "reading the repository",
    )
    .is_ok_and(|o| o == "true")
}

/// The repository's top directory, and the service's path inside it: for
/// a work tree, where `dir` is; for a bare repository, `subdir`.
fn locate(dir: &Path, subdir: Option<&str>) -> Result<(PathBuf, String), GitError> {
    if is_bare(dir) {
        let sub = subdir.unwrap_or("").trim_matches('/');
        let prefix = if sub.is_empty() {
            String::new()
        } else {
            format!("{sub}/")
        };
        return Ok((dir.to_path_buf(), prefix));
    }
    let top = git(
        dir,
        &["rev-parse", "--show-toplevel"],
        "finding the work tree",
    )?;
    let prefix = git(
        dir,
        &["rev-parse", "--show-prefix"],
        "finding the work tree",
    )?;
    Ok((PathBuf::from(top), prefix))
}

/// Files changed and not committed, `git status --porcelain` style (none
/// in a bare repository).
pub fn uncommitted(dir: &Path) -> Result<String, GitError> {
    if is_bare(dir) {
        return Ok(String::new());
    }
    git(
        dir,
        &["status", "--porcelain", "--", "."],
        "reading the status",
    )
}

/// Commits everything in the work tree with `message` (the seed's git-sync).
pub fn commit_all(dir: &Path, message: &str) -> Result<(), GitError> {
    git(dir, &["add", "-A", "--", "."], "adding the changes")?;
    git(dir, &["commit", "--quiet", "-m", message], "committing")?;
    Ok(())
}

/// Pushes the current branch to `remote`.
pub fn push(dir: &Path, remote: &str) -> Result<(), GitError> {
    git(
        dir,
        &["push", "--quiet", remote, "HEAD"],
        &format!("pushing to {remote}"),
    )?;
    Ok(())
}

/// The commit `reference` names.
pub fn resolve(dir: &Path, reference: &str) -> Result<CommitInfo, GitError> {
    let spec = format!("{reference}^{{commit}}");
    let sha = git(
        dir,
        &["rev-parse", "--verify", &spec],
        &format!("resolving {reference}"),
    )?;
    let subject = git(
        dir,
        &["log", "-1", "--format=%s", &sha],
        "reading the commit",
    )?;
    let branch = git(
        dir,
        &["rev-parse", "--abbrev-ref", reference],
        "reading the branch",
    )
    .ok()
    .filter(|b| b != "HEAD" && !b.is_empty());
    Ok(CommitInfo {
        sha,
        branch,
        subject,
    })
}

/// Writes the commit's tree of the service directory (`dir` in a work
/// tree, or `subdir` of a bare repository) into `dest`.
pub fn export(dir: &Path, subdir: Option<&str>, sha: &str, dest: &Path) -> Result<(), GitError> {
    let (top, prefix) = locate(dir, subdir)?;
    std::fs::create_dir_all(dest).map_err(|e| GitError {
        doing: format!("creating {}", dest.display()),
        output: e.to_string(),
    })?;
    let tree = if prefix.is_empty() {
        sha.to_string()
    } else {
        format!("{sha}:{}", prefix.trim_end_matches('/'))
    };
    let archive = Command::new("git")
        .arg("-C")
        .arg(&top)
        .args(["archive", "--format=tar", &tree])
        .output()
        .map_err(|e| GitError {
            doing: "exporting the commit".into(),
            output: e.to_string(),
        })?;
    if !archive.status.success() {
        return Err(GitError {
            doing: format!("exporting {tree}"),
            output: String::from_utf8_lossy(&archive.stderr).trim().to_string(),
        });
    }
    let mut tar = Command::new("tar")
        .args(["-x", "-C"])
        .arg(dest)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| GitError {
            doing: "unpacking the commit".into(),
            output: e.to_string(),
        })?;
    use std::io::Write;
    let written = tar
        .stdin
        .take()
        .map(|mut s| s.write_all(&archive.stdout))
        .transpose();
    let status = tar.wait();
    match (written, status) {
        (Ok(_), Ok(s)) if s.success() => Ok(()),
        _ => Err(GitError {
            doing: "unpacking the commit".into(),
            output: format!("tar failed into {}", dest.display()),
        }),
    }
}

/// A commit's tree exported for a release, in a fresh private directory
/// (a random name, mode 0700) removed when this is dropped.
pub struct Exported {
    pub commit: CommitInfo,
    dir: tempfile::TempDir,
}

impl Exported {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A reference a request may name: a branch, a tag, a sha, `HEAD~2`; no
/// option (`-…`), no spaces, nothing a shell or git would read otherwise.
pub fn check_ref(reference: &str) -> Result<(), GitError> {
    let ok = !reference.is_empty()
        && reference.len() <= 200
        && !reference.starts_with('-')
        && reference
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/@^~-".contains(c));
    match ok {
        true => Ok(()),
        false => Err(GitError {
            doing: format!("reading the reference {reference:?}"),
            output: "a branch, tag or commit is letters, digits and . _ / @ ^ ~ -".into(),
        }),
    }
}

/// Exports the commit `reference` names, of the service directory `dir`
/// (in a work tree, or `subdir` of a bare repository).
pub fn export_ref(dir: &Path, reference: &str, subdir: Option<&str>) -> Result<Exported, GitError> {
    check_ref(reference)?;
    let commit = resolve(dir, reference)?;
    let tmp = tempfile::Builder::new()
        .prefix("deployer-git-")
        .tempdir()
        .map_err(|e| GitError {
            doing: "making a directory to export into".into(),
            output: e.to_string(),
        })?;
    export(dir, subdir, &commit.sha, tmp.path())?;
    Ok(Exported { commit, dir: tmp })
}

impl From<GitError> for crate::support::error::Failure {
    fn from(e: GitError) -> Self {
        crate::support::error::Failure::new(crate::support::error::FailureKind::Git, e.to_string())
    }
}
