//! The unit file and the Dockerfile for running deployer itself, tried for
//! real: the unit on a systemd test host, the image on this Docker engine.

use crate::common::testhost::{TestHost, client_key, image_ready};
use crate::common::*;
use std::process::Command;

fn docker_ok(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_systemd_unit_runs_deployer_serve_on_a_server() {
    if !image_ready() {
        return;
    }
    let sb = Sandbox::new();
    let host = TestHost::start(&sb.name("pkg-unit"), &client_key(sb.dir.path()), &[]);
    let bin = env!("CARGO_BIN_EXE_deployer");
    docker_ok(&["cp", bin, &format!("{}:/usr/local/bin/deployer", host.name)]);
    let unit = repo().join("packaging/deployer.service");
    docker_ok(&[
        "cp",
        unit.to_str().unwrap(),
        &format!("{}:/etc/systemd/system/deployer.service", host.name),
    ]);
    host.exec(&["sh", "-c", "mkdir -p /etc/deployer /srv/services && echo DEPLOYER_API_TOKEN=unit-token-0123456789abcdef0123456789 > /etc/deployer/env && chmod 600 /etc/deployer/env && touch /etc/deployer/deployer.toml"]);
    host.exec(&["systemctl", "daemon-reload"]);
    host.exec(&["systemctl", "enable", "--now", "deployer"]);
    let health = eventually(30, "deployer to answer on the server", || {
        let out = host.exec(&["curl", "-s", "http://127.0.0.1:8007/health"]);
        out.contains("healthy").then_some(out)
    });
    assert!(health.contains("\"status\":\"healthy\""), "{health}");
    assert_eq!(
        host.exec(&["systemctl", "is-active", "deployer"]).trim(),
        "active"
    );
    assert_eq!(
        host.exec(&["stat", "-c", "%a", "/var/lib/deployer"]).trim(),
        "700"
    );
    // The token from the env file guards mutating endpoints.
    let code = host.exec(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        "http://127.0.0.1:8007/deploy",
        "-d",
        "{}",
    ]);
    assert_eq!(code.trim(), "401");
}

#[test]
fn the_dockerfile_packages_deployer_serve() {
    if !image_ready() {
        return;
    }
    let sb = Sandbox::new();
    let ctx = sb.dir.path().join("ctx");
    std::fs::create_dir_all(ctx.join("bin")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_deployer"), ctx.join("bin/deployer")).unwrap();
    std::fs::copy(repo().join("packaging/Dockerfile"), ctx.join("Dockerfile")).unwrap();
    let tag = format!("deployer-pkg-test:{}", sb.name("t"));
    // No base image can be pulled here; the test-host image stands in for
    // debian:bookworm-slim (same Debian release).
    docker_ok(&[
        "build",
        "-q",
        "-t",
        &tag,
        "--build-arg",
        "BASE=deployer-testhost:bookworm",
        "--build-arg",
        "BINARY=bin/deployer",
        ctx.to_str().unwrap(),
    ]);
    let port = free_port();
    let name = sb.name("pkg-ctr");
    let _ = Command::new("docker").args(["rm", "-f", &name]).output();
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "-e",
        "DEPLOYER_API_TOKEN=image-token-0123456789abcdef0123456789",
        "-p",
        &format!("127.0.0.1:{port}:8007"),
        &tag,
    ]);
    let health = eventually(30, "the container to answer", || {
        http_get(port, "/health").filter(|(c, _)| *c == 200)
    });
    assert!(health.1.contains("healthy"), "{}", health.1);
    let _ = Command::new("docker").args(["rm", "-f", &name]).output();

    // A short token is refused at startup, and says why.
    let out = Command::new("docker")
        .args(["run", "--rm", "-e", "DEPLOYER_API_TOKEN=short", &tag])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(10));
    assert!(String::from_utf8_lossy(&out.stderr).contains("shorter than 32 characters"));
    // Without one it makes one, says where, and mutating requests need it.
    let port = free_port();
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "-p",
        &format!("127.0.0.1:{port}:8007"),
        &tag,
    ]);
    eventually(30, "the container to answer", || {
        http_get(port, "/health").filter(|(c, _)| *c == 200)
    });
    let logs = Command::new("docker")
        .args(["logs", &name])
        .output()
        .unwrap();
    let logs = String::from_utf8_lossy(&logs.stderr);
    assert!(logs.contains("made one and kept it in"), "{logs}");
    let (code, _) = crate::common::server::request(port, "POST", "/deploy", Some(b"{}"), None);
    assert_eq!(code, 401);
    let _ = Command::new("docker").args(["rm", "-f", &name]).output();
    let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();
}
