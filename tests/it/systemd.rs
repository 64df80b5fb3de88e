//! The systemd method on realistic servers: Debian containers with systemd
//! as PID 1 and sshd, reached over SSH.

use crate::common::testhost::{TestHost, client_key, config_for, image_ready};
use crate::common::*;
use std::path::Path;

fn deploy(sb: &Sandbox, cfg: &str, src: &Path, name: &str, port: u16, extra: &[&str]) -> Run {
    let mut args = vec!["--config", cfg];
    args.extend_from_slice(extra);
    sb.deploy(src, name, port, "systemd", &args)
}

fn unit(name: &str, job: &serde_json::Value) -> String {
    format!(
        "deployer-{name}-{}.service",
        job["release"].as_str().unwrap()
    )
}

#[test]
fn python_service_gets_a_venv_and_a_unit() {
    if !image_ready() {
        return;
    }
    let sb = Sandbox::new();
    let port = free_port();
    let host = TestHost::start(&sb.name("sd-py"), &client_key(sb.dir.path()), &[port]);
    let cfg = config_for(&sb, &host);
    let name = &sb.name("pyhello");
    let src = sb.service("pyhello", "v1");
    let flags = [
        "--config",
        cfg.as_str(),
        "--secret",
        "API_KEY",
        "--env",
        "MODE=blue",
    ];
    // Without the secret's value the deploy is refused up front.
    let refused = sb.deploy(&src, name, port, "systemd", &flags);
    refused.assert_code(10);
    assert!(
        refused.stderr.contains("secret API_KEY has no value"),
        "{}",
        refused.stderr
    );

    let job = sb
        .deploy_env(
            &src,
            name,
            port,
            "systemd",
            &flags,
            &[("API_KEY", "py-secret-value-1")],
        )
        .assert_code(0)
        .json();
    assert_eq!(version_on(port).as_deref(), Some("v1"));
    assert_eq!(
        http_get(port, "/greeting").unwrap().1,
        "hello from a wheel",
        "requirements installed in the venv"
    );
    assert_eq!(http_get(port, "/env/MODE").unwrap().1, "blue");
    assert_eq!(
        http_get(port, "/env/API_KEY").unwrap().1,
        "py-secret-value-1"
    );
    assert_eq!(
        host.exec(&["systemctl", "is-active", &unit(name, &job)])
            .trim(),
        "active"
    );
    let release = job["release"].as_str().unwrap();
    let venv_python = format!("/srv/deployer/{name}/releases/{release}/.venv/bin/python");
    assert_eq!(
        host.exec(&["sh", "-c", &format!("test -x {venv_python} && echo venv")])
            .trim(),
        "venv"
    );
    let env_file = format!("/srv/deployer/{name}/env/{release}.env");
    assert_eq!(
        host.exec(&["stat", "-c", "%a", &env_file]).trim(),
        "600",
        "the env file holds secrets"
    );
    let unit_text = host.exec(&["cat", &format!("/etc/systemd/system/{}", unit(name, &job))]);
    assert!(unit_text.contains("Restart=on-failure"), "{unit_text}");
    assert!(
        !unit_text.contains("py-secret"),
        "secrets only in the 0600 env file: {unit_text}"
    );
    // An audit line on the host, too.
    let audit = host.exec(&["cat", &format!("/srv/deployer/{name}/audit.log")]);
    assert!(
        audit.contains(job["deploy_job_id"].as_str().unwrap()) && audit.contains("success"),
        "{audit}"
    );
}

#[test]
fn static_binary_v1_v2_and_a_failed_deploy_rolls_back_release_and_unit() {
    if !image_ready() {
        return;
    }
    let sb = Sandbox::new();
    let port = free_port();
    let host = TestHost::start(&sb.name("sd-bin"), &client_key(sb.dir.path()), &[port]);
    let cfg = config_for(&sb, &host);
    let name = &sb.name("hello");
    let v1 = sb.prebuilt("hello", "v1");
    add_to_manifest(&v1, "[limits]\nmemory = \"64m\"\ncpus = 1\n");
    // A dry run shows the unit's commands on the host and leaves nothing there.
    let dry = deploy(&sb, &cfg, &v1, name, port, &["--dry-run"]);
    dry.assert_code(0);
    assert!(dry.stdout.contains("systemctl"), "{}", dry.stdout);
    let there = host.exec(&[
        "sh",
        "-c",
        &format!(
            "ls /srv/deployer/{name} 2>&1; ls /etc/systemd/system | grep -c deployer-{name} || true"
        ),
    ]);
    assert!(there.contains("No such file"), "a dry run left {there}");
    assert!(
        there.trim_end().ends_with('0'),
        "a dry run wrote a unit: {there}"
    );
    let j1 = deploy(&sb, &cfg, &v1, name, port, &[])
        .assert_code(0)
        .json();
    assert_eq!(version_on(port).as_deref(), Some("v1"));
    let limits = host.exec(&[
        "systemctl",
        "show",
        "-p",
        "MemoryMax",
        "-p",
        "CPUQuotaPerSecUSec",
        &unit(name, &j1),
    ]);
    assert!(limits.contains("MemoryMax=67108864"), "{limits}");
    assert!(limits.contains("CPUQuotaPerSecUSec=1s"), "{limits}");
    logs_show_and_follow(&sb, name, &["--config", &cfg]);
    let j2 = deploy(&sb, &cfg, &sb.prebuilt("hello", "v2"), name, port, &[])
        .assert_code(0)
        .json();
    assert_eq!(version_on(port).as_deref(), Some("v2"));
    assert_eq!(
        host.exec(&["systemctl", "is-active", &unit(name, &j2)])
            .trim(),
        "active"
    );
    assert_ne!(
        host.exec(&["systemctl", "is-active", &unit(name, &j1)])
            .trim(),
        "active"
    );

    for (example, code) in [("broken/never-healthy", 4), ("broken/exits-at-start", 3)] {
        let bad = deploy(&sb, &cfg, &sb.prebuilt(example, "v3"), name, port, &[]);
        bad.assert_code(code);
        let job = bad.json();
        assert_eq!(job["rollback"]["success"], true, "{example}: {job:#}");
        assert_eq!(
            version_on(port).as_deref(),
            Some("v2"),
            "{example}: v2 answers again"
        );
        assert_eq!(
            host.exec(&["systemctl", "is-active", &unit(name, &j2)])
                .trim(),
            "active"
        );
        // The failed release's unit is gone.
        let units = host.exec(&[
            "sh",
            "-c",
            &format!(
                "ls /etc/systemd/system | grep -c {}",
                job["release"].as_str().unwrap()
            ),
        ]);
        assert_eq!(units.trim(), "0", "{example}");
    }
    let current = host.exec(&["readlink", &format!("/srv/deployer/{name}/current")]);
    assert_eq!(
        current.trim(),
        format!("releases/{}", j2["release"].as_str().unwrap())
    );

    // Manual rollback: v1's unit again.
    sb.run(&["--config", &cfg, "rollback", name]).assert_code(0);
    assert_eq!(version_on(port).as_deref(), Some("v1"));
    assert_eq!(
        host.exec(&["systemctl", "is-active", &unit(name, &j1)])
            .trim(),
        "active"
    );
}

#[test]
fn sshd_stopped_mid_transfer_fails_clearly_keeps_the_old_release_and_a_retry_succeeds() {
    if !image_ready() {
        return;
    }
    let sb = Sandbox::new();
    let port = free_port();
    let host = TestHost::start(&sb.name("sd-cut"), &client_key(sb.dir.path()), &[port]);
    let cfg = config_for(&sb, &host);
    let name = &sb.name("hello");
    let j1 = deploy(&sb, &cfg, &sb.prebuilt("hello", "v1"), name, port, &[])
        .assert_code(0)
        .json();

    // A release big enough that the upload takes a while.
    let src = sb.prebuilt("hello", "v2");
    let blob: Vec<u8> = (0..200u32 * 1024 * 1024)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    std::fs::write(src.join("blob.bin"), blob).unwrap();
    let child = sb
        .cmd()
        .args([
            "--json",
            "--config",
            &cfg,
            "deploy",
            src.to_str().unwrap(),
            "--name",
            name,
        ])
        .args(["--port", &port.to_string(), "--method", "systemd"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually(60, "the upload to start", || {
        let ls = host.exec(&["ls", "-a", &format!("/srv/deployer/{name}/releases")]);
        ls.contains(".partial").then_some(())
    });
    host.exec(&["pkill", "-9", "sshd"]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let err = phase(&job, "Transfer")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        err.contains(&host.address()),
        "the error names the host: {err}"
    );
    assert_eq!(
        version_on(port).as_deref(),
        Some("v1"),
        "the old release still answers"
    );
    let current = host.exec(&["readlink", &format!("/srv/deployer/{name}/current")]);
    assert_eq!(
        current.trim(),
        format!("releases/{}", j1["release"].as_str().unwrap())
    );

    host.exec(&["systemctl", "restart", "ssh"]);
    eventually(30, "sshd to come back", || {
        (host.exec(&["systemctl", "is-active", "ssh"]).trim() == "active").then_some(())
    });
    let retry = deploy(&sb, &cfg, &src, name, port, &[])
        .assert_code(0)
        .json();
    assert_eq!(version_on(port).as_deref(), Some("v2"));
    let leftovers = host.exec(&[
        "sh",
        "-c",
        &format!("ls -a /srv/deployer/{name}/releases | grep -c partial"),
    ]);
    assert_eq!(leftovers.trim(), "0", "the broken-off copy was cleaned up");
    assert_ne!(retry["release"], j1["release"]);
}

#[test]
fn health_is_checked_on_the_host_when_its_port_is_not_reachable_from_here() {
    if !image_ready() {
        return;
    }
    let sb = Sandbox::new();
    let port = free_port();
    // The service port is not published: deployer's machine cannot reach it.
    let host = TestHost::start(&sb.name("sd-fw"), &client_key(sb.dir.path()), &[]);
    let cfg = config_for(&sb, &host);
    let name = &sb.name("hello");
    let with_health = |from: &str, version: &str| {
        let src = sb.prebuilt("hello", version);
        let manifest = std::fs::read_to_string(src.join("service.toml"))
            .unwrap()
            .replace("timeout_secs = 30", "timeout_secs = 3")
            .replace("[health]\n", &format!("[health]\n{from}"));
        std::fs::write(src.join("service.toml"), manifest).unwrap();
        src
    };
    let unreachable = deploy(&sb, &cfg, &with_health("", "v1"), name, port, &[]);
    unreachable.assert_code(4);
    let err = phase(&unreachable.json(), "Verify Health")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        err.contains("not healthy within 3 s") && err.contains("connection refused"),
        "{err}"
    );

    let job = deploy(
        &sb,
        &cfg,
        &with_health("from = \"target\"\n", "v2"),
        name,
        port,
        &[],
    )
    .assert_code(0)
    .json();
    let details = phase(&job, "Verify Health")["details"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        details.contains(&format!("http://127.0.0.1:{port}/health")),
        "{details}"
    );
    let version = host.exec(&["curl", "-s", &format!("http://127.0.0.1:{port}/version")]);
    assert_eq!(version.trim(), "v2");
}

#[test]
fn a_disk_too_small_for_the_release_is_refused_before_uploading() {
    if !image_ready() {
        return;
    }
    let sb = Sandbox::new();
    let port = free_port();
    let host = TestHost::start_with(
        "127.0.0.1",
        &sb.name("sd-full"),
        &client_key(sb.dir.path()),
        &[port],
        &["--tmpfs", "/opt:size=12m,exec"],
    );
    let config = sb.dir.path().join("small.toml");
    std::fs::write(
        &config,
        format!(
            "[target]\nhost = \"{}\"\n{}",
            host.address(),
            crate::common::testhost::ssh_settings(&sb, &host.key)
                .replace("/srv/deployer", "/opt/deployer")
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let name = &sb.name("hello");
    let small = sb.prebuilt("hello", "v1");
    let j1 = deploy(&sb, cfg, &small, name, port, &[])
        .assert_code(0)
        .json();

    let big = sb.prebuilt("hello", "v2");
    std::fs::write(big.join("blob.bin"), vec![7u8; 16 << 20]).unwrap();
    let r = deploy(&sb, cfg, &big, name, port, &[]);
    r.assert_code(5);
    let err = phase(&r.json(), "Transfer")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        err.contains("not enough disk space") && err.contains("/opt/deployer"),
        "{err}"
    );
    assert_eq!(
        version_on(port).as_deref(),
        Some("v1"),
        "the old release still answers"
    );
    let ls = host.exec(&["ls", "-a", &format!("/opt/deployer/{name}/releases")]);
    assert!(
        !ls.contains("partial") && ls.contains(j1["release"].as_str().unwrap()),
        "{ls}"
    );
}

#[test]
fn redeploying_a_service_leaves_one_whose_name_starts_with_its_own_running() {
    if !image_ready() {
        return;
    }
    let sb = Sandbox::new();
    let (p1, p2) = (free_port(), free_port());
    let host = TestHost::start(&sb.name("sd-pfx"), &client_key(sb.dir.path()), &[p1, p2]);
    let cfg = config_for(&sb, &host);
    let api = sb.name("api");
    let api_v2 = format!("{api}-v2");
    let other = deploy(&sb, &cfg, &sb.prebuilt("hello", "v1"), &api_v2, p2, &[])
        .assert_code(0)
        .json();
    deploy(&sb, &cfg, &sb.prebuilt("hello", "v1"), &api, p1, &[]).assert_code(0);
    // A start command that tries to add a directive to the unit.
    let sneaky = [
        "--start",
        "./hello\nExecStartPre=+/bin/touch /root/injected",
    ];
    deploy(&sb, &cfg, &sb.prebuilt("hello", "v2"), &api, p1, &sneaky).assert_code(0);
    assert_eq!(version_on(p1).as_deref(), Some("v2"));
    assert_eq!(
        host.exec(&["systemctl", "is-active", &unit(&api_v2, &other)])
            .trim(),
        "active",
        "{api_v2} was stopped by {api}'s deploy"
    );
    assert_eq!(version_on(p2).as_deref(), Some("v1"));
    assert_eq!(
        host.exec(&[
            "sh",
            "-c",
            "test -e /root/injected && echo injected || echo clean"
        ])
        .trim(),
        "clean"
    );
}

#[test]
fn the_guarded_pipeline_on_a_server_tests_warm_up_and_smoke_checks() {
    if !image_ready() {
        return;
    }
    let sb = Sandbox::new();
    let port = free_port();
    let host = TestHost::start(&sb.name("sd-pipe"), &client_key(sb.dir.path()), &[port]);
    let cfg = config_for(&sb, &host);
    let name = &sb.name("guarded");
    // v1 warms up for 3 s and passes its server tests and smoke check.
    let v1 = sb.prebuilt("hello", "v1");
    add_to_manifest(
        &v1,
        "\n[tests]\nserver = \"test -x hello && grep -q v1 VERSION\"\n\n[[smoke]]\npath = \"/version\"\nbody_contains = \"v1\"\n",
    );
    let job = deploy(
        &sb,
        &cfg,
        &v1,
        name,
        port,
        &["--env", "WARMUP_SECS=3", "--json"],
    )
    .assert_code(0)
    .json();
    assert!(
        phase(&job, "Verify Health")["duration_ms"]
            .as_i64()
            .unwrap()
            >= 3000
    );
    assert_eq!(version_on(port).as_deref(), Some("v1"));
    let current = host.exec(&["readlink", &format!("/srv/deployer/{name}/current")]);

    // v2's server tests fail on the server: discarded, current untouched.
    let v2 = sb.prebuilt("hello", "v2");
    add_to_manifest(&v2, "\n[tests]\nserver = \"grep -q v1 VERSION\"\n");
    let r = deploy(&sb, &cfg, &v2, name, port, &[]);
    r.assert_code(1);
    assert!(r.stdout.contains("server tests failed"), "{}", r.stdout);
    assert_eq!(
        host.exec(&["readlink", &format!("/srv/deployer/{name}/current")]),
        current
    );
    assert_eq!(version_on(port).as_deref(), Some("v1"));

    // v3 is healthy but fails its smoke check: rolled back, exit 4.
    let v3 = sb.prebuilt("hello", "v3");
    add_to_manifest(
        &v3,
        "\n[[smoke]]\npath = \"/version\"\nbody_contains = \"v1\"\n",
    );
    let r = deploy(&sb, &cfg, &v3, name, port, &[]);
    r.assert_code(4);
    assert!(
        r.stdout.contains("smoke check /version failed"),
        "{}",
        r.stdout
    );
    assert_eq!(version_on(port).as_deref(), Some("v1"));
}
