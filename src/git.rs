//! Git-driven releases: a release that is exactly one commit's tree (the
//! ops seed's git-sync: commit, push, deploy what was pushed). The tree is
//! exported with `git archive` into a directory deployer then transfers
//! like any other release, so uploads stay incremental.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The commit a release was made from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommitInfo {
    pub sha: String,
    /// The branch it was on, when HEAD was on one.
    pub branch: Option<String>,
    /// The first line of its message.
    pub subject: String,
}

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

/// The work tree's top directory, and `dir`'s path inside it.
fn locate(dir: &Path) -> Result<(PathBuf, String), GitError> {
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

/// Files changed and not committed, `git status --porcelain` style.
pub fn uncommitted(dir: &Path) -> Result<String, GitError> {
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

/// Writes the commit's tree of `dir` (the service directory, maybe a
/// subdirectory of the work tree) into `dest`.
pub fn export(dir: &Path, sha: &str, dest: &Path) -> Result<(), GitError> {
    let (top, prefix) = locate(dir)?;
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

/// A fresh directory to export a commit into (removed after the deploy).
pub fn export_dir(sha: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "deployer-git-{}-{}",
        &sha[..sha.len().min(12)],
        std::process::id()
    ))
}

impl From<GitError> for crate::error::Failure {
    fn from(e: GitError) -> Self {
        crate::error::Failure::new(crate::error::FailureKind::Git, e.to_string())
    }
}
