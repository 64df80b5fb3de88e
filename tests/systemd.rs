//! The systemd method on realistic servers: Debian containers with systemd
//! as PID 1 and sshd, reached over SSH.

mod common;
use common::testhost::{TestHost, client_key, image_ready};
use common::*;
use std::path::{Path, PathBuf};

fn config_for(sb: &Sandbox, host: &TestHost) -> String {
    let config = sb.dir.path().join(format!("{}.toml", host.name));
    std::fs::write(
        &config,
        format!(
            "[target]\nhost = \"{}\"\nssh_key = {:?}\nknown_hosts = {:?}\nbase_dir = \"/srv/deployer\"\naccept_new_host_key = true\n",
            host.address(),
            host.key,
            sb.dir.path().join("known_hosts"),
        ),
    )
    .unwrap();
    config.to_str().unwrap().to_string()
}

/// An example with its static binary built here; no build command.
fn prebuilt(sb: &Sandbox, example: &str, version: &str) -> PathBuf {
    let dir = sb.service(example, version);
    let ok = std::process::Command::new("rustc")
        .args([
            "-O",
            "-C",
            "target-feature=+crt-static",
            "-o",
            "hello",
            "main.rs",
        ])
        .current_dir(&dir)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let manifest: String = std::fs::read_to_string(dir.join("service.toml"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("build ="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(dir.join("service.toml"), manifest).unwrap();
    dir
}

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
    let j1 = deploy(&sb, &cfg, &prebuilt(&sb, "hello", "v1"), name, port, &[])
        .assert_code(0)
        .json();
    assert_eq!(version_on(port).as_deref(), Some("v1"));
    let j2 = deploy(&sb, &cfg, &prebuilt(&sb, "hello", "v2"), name, port, &[])
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
        let bad = deploy(&sb, &cfg, &prebuilt(&sb, example, "v3"), name, port, &[]);
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
