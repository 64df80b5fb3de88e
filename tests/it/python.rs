//! Python services (the seeds' kind): a FastAPI app with requirements.txt
//! and no start command, on the process method here (packages from the
//! index) and on the systemd method on a test host (from its wheelhouse).

use crate::common::testhost::{TestHost, client_key, config_for, image_ready};
use crate::common::*;
use std::path::Path;

/// The Build phase's `python dependencies` step of a job.
fn deps_step(job: &serde_json::Value) -> serde_json::Value {
    step(job, "Build", "python dependencies").clone()
}

fn step_ms(step: &serde_json::Value) -> u64 {
    step["duration_ms"].as_u64().unwrap_or(u64::MAX)
}

fn add_requirement(src: &Path, line: &str) {
    let path = src.join("requirements.txt");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(line);
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_fastapi_app_deploys_with_no_start_command_and_its_venv_is_reused() {
    let sb = Sandbox::new();
    let name = &sb.name("fastapi");
    let port = free_port();
    // Local tests (pytest, from requirements.txt) run in a venv first.
    let j1 = sb
        .deploy(&sb.service("fastapi", "v1"), name, port, "process", &[])
        .assert_code(0)
        .json();
    assert_eq!(version_on(port).as_deref(), Some("\"v1\""));
    let validation = phase(&j1, "Validation")["details"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        validation.contains("Python service (requirements.txt; starts with `uvicorn main:app"),
        "{validation}"
    );
    assert!(
        phase(&j1, "Transfer")["details"]
            .as_str()
            .unwrap()
            .contains("1 passed"),
        "pytest ran in the venv: {j1:#}"
    );

    // The same requirements: nothing installed.
    let j2 = sb
        .deploy(
            &sb.service("fastapi", "v2"),
            name,
            port,
            "process",
            &["--skip-tests"],
        )
        .assert_code(0)
        .json();
    let deps = deps_step(&j2);
    assert!(
        deps["details"].as_str().unwrap().contains("reused"),
        "{deps}"
    );
    assert!(
        step_ms(&deps) < 1000,
        "an unchanged requirements file costs {deps}"
    );
    assert_eq!(version_on(port).as_deref(), Some("\"v2\""));

    // A changed requirements file installs the new package.
    let v3 = sb.service("fastapi", "v3");
    add_requirement(&v3, "six==1.17.0");
    let j3 = sb
        .deploy(&v3, name, port, "process", &["--skip-tests"])
        .assert_code(0)
        .json();
    let deps = deps_step(&j3);
    assert!(
        deps["details"].as_str().unwrap().contains("installed"),
        "{deps}"
    );
    let current = sb.state_dir().join("services").join(name).join("current");
    let import = std::process::Command::new(current.join(".venv/bin/python"))
        .args(["-c", "import six"])
        .status()
        .unwrap();
    assert!(import.success(), "six is in the current release's venv");
    assert_eq!(version_on(port).as_deref(), Some("\"v3\""));

    // A requirement that does not exist fails Build with pip's own words.
    let v4 = sb.service("fastapi", "v4");
    add_requirement(&v4, "deployer-no-such-package-anywhere==1.0");
    let bad = sb.deploy(&v4, name, port, "process", &["--skip-tests"]);
    bad.assert_code(2);
    let job = bad.json();
    let error = phase(&job, "Build")["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("No matching distribution found for deployer-no-such-package-anywhere"),
        "{error}"
    );
    assert_eq!(
        version_on(port).as_deref(),
        Some("\"v3\""),
        "the previous release answers"
    );

    // Keeping one release: the venv only pruned releases linked goes too.
    let venvs = sb.state_dir().join("services").join(name).join("venvs");
    let count = || std::fs::read_dir(&venvs).unwrap().count();
    assert_eq!(count(), 2, "v1 and v2 share one venv, v3 has its own");
    let v5 = sb.service("fastapi", "v5");
    add_requirement(&v5, "six==1.17.0");
    let manifest = std::fs::read_to_string(v5.join("service.toml")).unwrap();
    std::fs::write(
        v5.join("service.toml"),
        format!("keep_releases = 1\n{manifest}"),
    )
    .unwrap();
    sb.deploy(&v5, name, port, "process", &["--skip-tests"])
        .assert_code(0);
    assert_eq!(count(), 1, "v1 and v2 are gone, and their venv with them");
    assert_eq!(version_on(port).as_deref(), Some("\"v5\""));
}

#[test]
fn a_python_service_with_nothing_to_start_is_told_which_key_to_set() {
    let sb = Sandbox::new();
    let src = sb.service("fastapi", "v1");
    std::fs::remove_file(src.join("main.py")).unwrap();
    let r = sb.deploy(
        &src,
        &sb.name("noapp"),
        free_port(),
        "process",
        &["--skip-tests"],
    );
    r.assert_code(10);
    assert!(r.stderr.contains("asgi = \"module:app\""), "{}", r.stderr);
}

/// The example's requirements as wheels for the test hosts' Python (3.11,
/// x86_64, as here), downloaded from the package index once per machine.
fn wheelhouse() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fastapi-wheelhouse");
    if dir.join(".complete").exists() {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let ok = std::process::Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--only-binary=:all:", "--python-version", "3.11", "-d"])
        .arg(&dir)
        .arg("-r")
        .arg(repo().join("examples/fastapi/requirements.txt"))
        .status()
        .unwrap()
        .success();
    assert!(ok, "pip download of the example's requirements");
    std::fs::write(dir.join(".complete"), "").unwrap();
    dir
}

#[test]
fn a_fastapi_app_deploys_to_a_systemd_host_from_its_wheelhouse() {
    if !image_ready() {
        return;
    }
    let sb = Sandbox::new();
    let port = free_port();
    let host = TestHost::start(&sb.name("sd-fastapi"), &client_key(sb.dir.path()), &[port]);
    let cfg = config_for(&sb, &host);
    let name = &sb.name("fastapi");
    let src = sb.service("fastapi", "v1");
    copy_dir(&wheelhouse(), &src.join("wheelhouse"));
    // Reached through the container's published port: bind every address.
    add_to_manifest(&src, "[python]\nbind = \"0.0.0.0\"\n");
    let deploy = || {
        sb.deploy(
            &src,
            name,
            port,
            "systemd",
            &["--config", &cfg, "--skip-tests"],
        )
        .assert_code(0)
        .json()
    };
    let j1 = deploy();
    assert_eq!(version_on(port).as_deref(), Some("\"v1\""));
    let deps = deps_step(&j1);
    assert!(
        deps["details"]
            .as_str()
            .unwrap()
            .contains("installed from wheelhouse/"),
        "{deps}"
    );
    let j2 = deploy();
    let deps = deps_step(&j2);
    assert!(
        deps["details"].as_str().unwrap().contains("reused"),
        "{deps}"
    );
    assert!(step_ms(&deps) < 1000, "{deps}");
    let venvs = host.exec(&["ls", &format!("/srv/deployer/{name}/venvs")]);
    assert_eq!(
        venvs.lines().count(),
        1,
        "one venv for both releases: {venvs}"
    );
    assert_eq!(version_on(port).as_deref(), Some("\"v1\""));
}
