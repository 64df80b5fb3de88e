//! Zero-downtime deploys behind a real reverse proxy (nginx): a steady
//! stream of requests through the proxy during ten redeploys, a deploy
//! whose release never becomes healthy and a manual rollback, with no
//! failed request.

use crate::common::load::*;
use crate::common::*;
use std::path::PathBuf;

fn with_proxy(src: PathBuf, public: u16) -> PathBuf {
    add_to_manifest(&src, &format!("[proxy]\nport = {public}\ndrain_secs = 1\n"));
    src
}

/// Ten redeploys, a failed one and a rollback under load through the
/// proxy on `public`; `global` flags go before every command.
fn ten_redeploys_a_failed_one_and_a_rollback(
    sb: &Sandbox,
    method: &str,
    public: u16,
    global: &[&str],
) {
    let name = &sb.name("zd");
    let version = |sb: &Sandbox, v: &str| {
        if method == "docker" {
            with_proxy(sb.service("hello", v), public)
        } else {
            with_proxy(sb.prebuilt("hello", v), public)
        }
    };
    let j1 = sb
        .deploy(&version(sb, "v1"), name, public, method, global)
        .assert_code(0)
        .json();
    assert_eq!(j1["service_url"], format!("http://127.0.0.1:{public}"));
    assert_eq!(get(public).unwrap(), (200, "v1".to_string()));

    let load = Load::start(public);
    for i in 2..=11 {
        let v = format!("v{i}");
        sb.deploy(&version(sb, &v), name, public, method, global)
            .assert_code(0);
        // Every new response comes from the new release.
        for _ in 0..5 {
            assert_eq!(
                get(public).unwrap(),
                (200, v.clone()),
                "after the switch to {v}"
            );
        }
    }
    // A release that never becomes healthy: the proxy never sends to it.
    let bad = if method == "docker" {
        with_proxy(sb.service("broken/never-healthy", "bad"), public)
    } else {
        with_proxy(sb.prebuilt("broken/never-healthy", "bad"), public)
    };
    sb.deploy(&bad, name, public, method, global).assert_code(4);
    assert_eq!(get(public).unwrap(), (200, "v11".to_string()));
    // A manual rollback while v10 may still drain: back to v10.
    let mut rollback = global.to_vec();
    rollback.extend(["rollback", name.as_str()]);
    sb.run(&rollback).assert_code(0);
    assert_eq!(get(public).unwrap(), (200, "v10".to_string()));
    let answers = load.finish();
    assert_none_failed(&answers, 100);
    let bodies: std::collections::BTreeSet<&str> = answers
        .iter()
        .filter_map(|a| a.as_ref().ok().map(|(_, b)| b.as_str()))
        .collect();
    assert!(!bodies.contains(""), "no empty answer: {bodies:?}");
    assert!(bodies.iter().all(|b| b.starts_with('v')), "{bodies:?}");
    eprintln!(
        "{method}: {} requests through the proxy, none failed, versions {bodies:?}",
        answers.len()
    );

    // Down on purpose: a maintenance page, then the current release again.
    let with = |cmd: &[&str]| {
        let mut args = global.to_vec();
        args.extend(cmd);
        sb.run(&args)
    };
    with(&["pause", name, "--message", "Back at <5>"]).assert_code(0);
    let (status, page) = get(public).unwrap();
    assert_eq!(status, 503, "{page}");
    assert!(page.contains("Back at &lt;5&gt;"), "{page}");
    with(&["resume", name]).assert_code(0);
    assert_eq!(get(public).unwrap(), (200, "v10".to_string()));
}

#[test]
fn process_redeploys_behind_the_proxy_drop_no_request() {
    let sb = Sandbox::new();
    ten_redeploys_a_failed_one_and_a_rollback(&sb, "process", free_port(), &[]);
}

#[test]
fn docker_redeploys_behind_the_proxy_drop_no_request() {
    if !require_docker() {
        return;
    }
    let sb = Sandbox::new();
    ten_redeploys_a_failed_one_and_a_rollback(&sb, "docker", free_port(), &[]);
}

#[test]
fn systemd_redeploys_on_a_server_behind_its_proxy_drop_no_request() {
    if !crate::common::testhost::image_ready() {
        return;
    }
    use crate::common::testhost::{TestHost, client_key, config_for};
    let sb = Sandbox::new();
    let public = free_port();
    // Only the public port is published: private ports stay on the server,
    // where the health checks run. nginx is installed there by deployer.
    let host = TestHost::start(&sb.name("sd-proxy"), &client_key(sb.dir.path()), &[public]);
    let cfg = config_for(&sb, &host);
    ten_redeploys_a_failed_one_and_a_rollback(&sb, "systemd", public, &["--config", &cfg]);
    let units = host.exec(&["systemctl", "is-active", "deployer-proxy.service"]);
    assert_eq!(
        units.trim(),
        "active",
        "the proxy runs as a systemd unit there"
    );
}

#[test]
fn services_share_a_public_port_by_host_name() {
    let sb = Sandbox::new();
    let public = free_port();
    let deploy = |name: &str, version: &str, proxy: &str| {
        let src = sb.prebuilt("hello", version);
        add_to_manifest(
            &src,
            &format!("[proxy]\nport = {public}\ndrain_secs = 1\n{proxy}"),
        );
        sb.deploy(&src, name, public, "process", &[])
    };
    let (a, b) = (sb.name("hosta"), sb.name("hostb"));
    deploy(&a, "va", "host = \"a.test\"\n").assert_code(0);
    deploy(&b, "vb", "host = \"b.test\"\n").assert_code(0);
    assert_eq!(get_for(public, "a.test").unwrap(), (200, "va".to_string()));
    assert_eq!(get_for(public, "b.test").unwrap(), (200, "vb".to_string()));
    // Redeploying one leaves the other alone.
    deploy(&b, "vb2", "host = \"b.test\"\n").assert_code(0);
    assert_eq!(get_for(public, "b.test").unwrap(), (200, "vb2".to_string()));
    assert_eq!(get_for(public, "a.test").unwrap(), (200, "va".to_string()));

    let no_host = deploy(&sb.name("hostc"), "vc", "");
    no_host.assert_code(10);
    assert!(
        no_host.stderr.contains("set [proxy] host"),
        "{}",
        no_host.stderr
    );
    let same = deploy(&sb.name("hostd"), "vd", "host = \"a.test\"\n");
    same.assert_code(10);
    assert!(
        same.stderr
            .contains(&format!("already serves a.test for service '{a}'")),
        "{}",
        same.stderr
    );
}

#[test]
fn https_with_a_certificate_from_the_internal_ca() {
    let sb = Sandbox::new();
    let (public, tls) = (free_port(), free_port());
    let name = &sb.name("tls");
    let src = sb.prebuilt("hello", "v1");
    add_to_manifest(
        &src,
        &format!("[proxy]\nport = {public}\ntls_port = {tls}\nhost = \"app.test\"\n"),
    );
    sb.deploy(&src, name, public, "process", &[]).assert_code(0);
    let ca = sb.state_dir().join("services/.proxy/ca/ca.crt");
    let curl = std::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&ca)
        .args(["--resolve", &format!("app.test:{tls}:127.0.0.1")])
        .arg(format!("https://app.test:{tls}/version"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&curl.stdout).trim(),
        "v1",
        "{}",
        String::from_utf8_lossy(&curl.stderr)
    );
    assert_eq!(
        get_for(public, "app.test").unwrap(),
        (200, "v1".to_string())
    );
    // Without the CA, the certificate is not trusted.
    let untrusted = std::process::Command::new("curl")
        .args(["-sS", "--resolve", &format!("app.test:{tls}:127.0.0.1")])
        .arg(format!("https://app.test:{tls}/version"))
        .output()
        .unwrap();
    assert!(!untrusted.status.success());
}
