//! Git-driven releases against real repositories: a work tree with a bare
//! "origin" beside it.

use crate::common::*;
use std::path::Path;
use std::process::Command;

const AUTHOR: [(&str, &str); 4] = [
    ("GIT_AUTHOR_NAME", "Test"),
    ("GIT_AUTHOR_EMAIL", "test@example.invalid"),
    ("GIT_COMMITTER_NAME", "Test"),
    ("GIT_COMMITTER_EMAIL", "test@example.invalid"),
];

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .envs(AUTHOR)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A work tree holding the example service in `svc/`, committed, with a
/// bare `origin`.
fn repo(sb: &Sandbox) -> (std::path::PathBuf, std::path::PathBuf) {
    let work = sb.dir.path().join("work");
    let origin = sb.dir.path().join("origin.git");
    std::fs::create_dir_all(&work).unwrap();
    git(
        sb.dir.path(),
        &[
            "init",
            "--quiet",
            "--bare",
            "-b",
            "main",
            origin.to_str().unwrap(),
        ],
    );
    git(&work, &["init", "--quiet", "-b", "main"]);
    copy_dir(&sb.service("hello", "v1"), &work.join("svc"));
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "--quiet", "-m", "hello v1"]);
    git(
        &work,
        &["remote", "add", "origin", origin.to_str().unwrap()],
    );
    git(&work, &["push", "--quiet", "origin", "main"]);
    (work, origin)
}

#[test]
fn a_git_deploy_releases_exactly_a_commits_tree_and_records_its_sha() {
    let sb = Sandbox::new();
    let (work, origin) = repo(&sb);
    let svc = work.join("svc");
    let name = &sb.tracked("gitsvc");
    let port = free_port().to_string();
    let deploy = |extra: &[&str]| {
        let mut args = vec![
            "--json",
            "deploy",
            svc.to_str().unwrap(),
            "--name",
            name,
            "--port",
            &port,
        ];
        args.extend_from_slice(extra);
        sb.run_with(&args, |c| {
            c.envs(AUTHOR);
        })
    };
    let job = deploy(&["--git"]).assert_code(0).json();
    let head = git(&work, &["rev-parse", "HEAD"]);
    assert_eq!(job["commit"]["sha"], head.as_str());
    assert_eq!(job["commit"]["branch"], "main");
    assert_eq!(job["commit"]["subject"], "hello v1");
    assert_eq!(job["service_path"], svc.display().to_string());
    let port_n: u16 = port.parse().unwrap();
    assert_eq!(version_on(port_n).as_deref(), Some("v1"));

    // The release holds the commit's files: an untracked file stays out.
    std::fs::write(svc.join("VERSION"), "v2\n").unwrap();
    std::fs::write(svc.join("notes.txt"), "scratch\n").unwrap();
    let refused = deploy(&["--git"]);
    refused.assert_code(14);
    assert!(
        refused.stderr.contains("uncommitted changes"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("notes.txt"), "{}", refused.stderr);
    std::fs::remove_file(svc.join("notes.txt")).unwrap();

    // -m commits first, --push sends it to origin.
    let job = deploy(&["--git", "-m", "hello v2", "--push"])
        .assert_code(0)
        .json();
    let head = git(&work, &["rev-parse", "HEAD"]);
    assert_eq!(job["commit"]["sha"], head.as_str());
    assert_eq!(git(&origin, &["rev-parse", "main"]), head, "pushed");
    assert_eq!(version_on(port_n).as_deref(), Some("v2"));
    let release = sb
        .state_dir()
        .join("services")
        .join(name)
        .join("releases")
        .join(job["release"].as_str().unwrap());
    let mut files: Vec<String> = files_under(&release)
        .iter()
        .map(|p| p.strip_prefix(&release).unwrap().display().to_string())
        .filter(|p| p != "hello")
        .collect();
    files.sort();
    let mut tree: Vec<String> = git(&work, &["ls-tree", "-r", "--name-only", "HEAD", "svc/"])
        .lines()
        .map(|l| l.trim_start_matches("svc/").to_string())
        .collect();
    tree.sort();
    assert_eq!(files, tree);

    // An older commit by its ref.
    let job = deploy(&["--git", "HEAD~1"]).assert_code(0).json();
    assert_eq!(job["commit"]["subject"], "hello v1");
    assert_eq!(version_on(port_n).as_deref(), Some("v1"));
    let releases = sb.run(&["--json", "releases", name]).json();
    assert!(releases.to_string().contains(head.as_str()), "{releases}");
    deploy(&["--git", "no-such-ref"]).assert_code(14);
}

fn push(work: &Path) -> std::process::Output {
    Command::new("git")
        .arg("-C")
        .arg(work)
        .args(["push", "origin", "main"])
        .envs(AUTHOR)
        .output()
        .unwrap()
}

#[test]
fn a_push_to_the_hooked_repository_deploys_and_a_failing_one_is_rejected() {
    let sb = Sandbox::new();
    let (work, origin) = repo(&sb);
    let name = &sb.tracked("pushed");
    let port = free_port();
    let port_s = port.to_string();
    sb.run(&[
        "hook",
        "install",
        "--repo",
        origin.to_str().unwrap(),
        "--path",
        "svc",
        "--",
        "--name",
        name,
        "--port",
        &port_s,
        "--no-register",
    ])
    .assert_code(0);

    std::fs::write(work.join("svc/VERSION"), "v2\n").unwrap();
    git(&work, &["commit", "--quiet", "-am", "hello v2"]);
    let out = push(&work);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("Verify Health"),
        "the pusher sees the phases: {said}"
    );
    assert_eq!(version_on(port).as_deref(), Some("v2"));
    let history = sb.run(&["--json", "history", name]).json();
    assert_eq!(
        history[0]["commit"]["sha"],
        git(&work, &["rev-parse", "HEAD"]).as_str()
    );
    assert_eq!(history[0]["commit"]["subject"], "hello v2");

    // A commit whose health check fails: the push is rejected, v2 answers.
    let broken = sb.service("broken/never-healthy", "v3");
    for f in ["main.rs", "service.toml", "VERSION"] {
        std::fs::copy(broken.join(f), work.join("svc").join(f)).unwrap();
    }
    git(&work, &["commit", "--quiet", "-am", "never healthy"]);
    let out = push(&work);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the push went through: {said}");
    assert!(said.contains("push rejected"), "{said}");
    assert!(said.contains("✗ Verify Health"), "{said}");
    assert_eq!(version_on(port).as_deref(), Some("v2"));
    assert_ne!(
        git(&origin, &["rev-parse", "main"]),
        git(&work, &["rev-parse", "HEAD"])
    );
}

/// `POST /deploy` with `git_ref`: the release is the commit's tree, not the
/// work tree as it is; the job records the commit; a bad ref is a 400 that
/// names the field, and nothing is deployed.
#[test]
fn the_api_deploys_a_git_ref_exactly_and_refuses_a_bad_one() {
    let sb = Sandbox::new();
    let (work, _) = repo(&sb);
    let server = crate::common::server::Server::start(&sb, &work, &[]);
    let svc = work.join("svc");
    let committed = git(&work, &["rev-parse", "HEAD"]);
    // An uncommitted change: not part of the commit, so not deployed.
    std::fs::write(svc.join("VERSION"), "dirty\n").unwrap();
    let name = sb.tracked("from-git");
    let port = free_port();
    let body = serde_json::json!({
        "service_path": svc, "service_name": name, "service_port": port,
        "deployment_method": "process", "git_ref": "main", "auto_register": false,
    });
    let (code, accepted) = server.post("/deploy", Some(&body.to_string()));
    assert_eq!(code, 202, "{accepted}");
    let id = accepted["deploy_job_id"].as_str().unwrap().to_string();
    let job = eventually(120, "the git deploy to finish", || {
        let (_, job) = server.get(&format!("/deploy/{id}"));
        (job["status"] == "completed" || job["status"] == "failed").then_some(job)
    });
    assert_eq!(job["status"], "completed", "{job:#}");
    assert_eq!(
        version_on(port).as_deref(),
        Some("v1"),
        "the commit, not the work tree"
    );
    assert_eq!(job["commit"]["sha"], committed.as_str(), "{job:#}");

    for bad in [
        "--upload-pack=touch /tmp/x",
        "no-such-branch",
        "main; rm -rf /",
    ] {
        let body = serde_json::json!({
            "service_path": svc, "service_name": name, "service_port": port,
            "deployment_method": "process", "git_ref": bad, "auto_register": false,
        });
        let (code, answer) = server.post("/deploy", Some(&body.to_string()));
        assert_eq!(code, 400, "{bad}: {answer}");
        assert_eq!(answer["field"], "git_ref", "{bad}: {answer}");
    }
    assert_eq!(version_on(port).as_deref(), Some("v1"));
}
