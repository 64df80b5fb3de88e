//! Rollouts to three hosts (systemd containers on 127.0.0.2-4): a canary
//! wave first, then the rest; a failed wave stops the rollout.

use crate::common::testhost::{TestHost, client_key, image_ready, ssh_settings};
use crate::common::*;
use std::path::{Path, PathBuf};

struct Fleet {
    sb: Sandbox,
    hosts: Vec<TestHost>,
    config: PathBuf,
    port: u16,
    name: String,
}

impl Fleet {
    fn new() -> Fleet {
        let sb = Sandbox::new();
        let port = free_port();
        let key = client_key(sb.dir.path());
        let hosts: Vec<TestHost> = (2..=4)
            .map(|i| {
                TestHost::start_on(
                    &format!("127.0.0.{i}"),
                    &sb.name(&format!("fleet{i}")),
                    &key,
                    &[port],
                )
            })
            .collect();
        let config = sb.dir.path().join("deployer.toml");
        std::fs::write(&config, format!("[target]\n{}", ssh_settings(&sb, &key))).unwrap();
        let name = sb.name("web");
        Fleet {
            sb,
            hosts,
            config,
            port,
            name,
        }
    }

    /// The example, prebuilt, with a rollout policy in its manifest.
    fn service(&self, example: &str, version: &str, extra_manifest: &str) -> PathBuf {
        let dir = self.sb.prebuilt(example, version);
        let mut manifest = std::fs::read_to_string(dir.join("service.toml")).unwrap();
        manifest.push_str(&format!(
            "\n[rollout]\ncanary = 1\nparallel = 2\n{extra_manifest}"
        ));
        std::fs::write(dir.join("service.toml"), manifest).unwrap();
        dir
    }

    fn deploy(&self, src: &Path, extra: &[&str]) -> Run {
        let mut args = vec!["--config", self.config.to_str().unwrap()];
        let addresses: Vec<String> = self.hosts.iter().map(|h| h.address()).collect();
        for a in &addresses {
            args.push("--host");
            args.push(a);
        }
        args.extend_from_slice(extra);
        self.sb.deploy(src, &self.name, self.port, "systemd", &args)
    }

    fn versions(&self) -> Vec<Option<String>> {
        self.hosts
            .iter()
            .map(|h| http_get_at(&h.ip, self.port, "/version").map(|(_, b)| b.trim().to_string()))
            .collect()
    }

    fn current(&self, host: &TestHost) -> String {
        host.exec(&["readlink", &format!("/srv/deployer/{}/current", self.name)])
            .trim()
            .to_string()
    }
}

fn v(s: &str) -> Option<String> {
    Some(s.to_string())
}

#[test]
fn a_canary_failure_stops_the_rollout_and_a_good_release_reaches_all_three() {
    if !image_ready() {
        return;
    }
    let f = Fleet::new();
    let j1 = f
        .deploy(&f.service("hello", "v1", ""), &[])
        .assert_code(0)
        .json();
    assert_eq!(f.versions(), [v("v1"), v("v1"), v("v1")]);
    let hosts = j1["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3);
    assert_eq!(
        hosts
            .iter()
            .map(|h| h["wave"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [0, 1, 1]
    );
    assert!(
        hosts
            .iter()
            .all(|h| h["status"] == "completed" && h["release"] == j1["release"])
    );
    assert_eq!(
        phase(&j1, "Verify Health")["details"],
        "3 of 3 hosts succeeded"
    );
    let before: Vec<String> = f.hosts.iter().map(|h| f.current(h)).collect();

    // The canary never becomes healthy: the others are never touched.
    let bad = f.deploy(&f.service("broken/never-healthy", "v2", ""), &[]);
    bad.assert_code(4);
    let job = bad.json();
    let hosts = job["hosts"].as_array().unwrap();
    assert_eq!(hosts[0]["status"], "failed");
    assert_eq!(hosts[0]["rollback"]["success"], true);
    assert_eq!(hosts[1]["status"], "skipped");
    assert_eq!(hosts[2]["status"], "skipped");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .starts_with(&f.hosts[0].address()),
        "{}",
        job["error"]
    );
    assert_eq!(f.versions(), [v("v1"), v("v1"), v("v1")]);
    let after: Vec<String> = f.hosts.iter().map(|h| f.current(h)).collect();
    assert_eq!(after, before);
    for h in &f.hosts[1..] {
        let releases = h.exec(&["ls", &format!("/srv/deployer/{}/releases", f.name)]);
        assert_eq!(
            releases.lines().count(),
            1,
            "nothing was transferred to {}",
            h.name
        );
    }

    let j3 = f
        .deploy(&f.service("hello", "v3", ""), &[])
        .assert_code(0)
        .json();
    assert_eq!(f.versions(), [v("v3"), v("v3"), v("v3")]);
    // Every host received and built v3 before the canary started it; no
    // other host started it before the canary was healthy.
    let at = |host: usize, name: &str, end: &str| -> String {
        let phases = j3["hosts"][host]["phases"].as_array().unwrap();
        let p = phases.iter().find(|p| p["phase"] == name).unwrap();
        p[end]
            .as_str()
            .unwrap_or_else(|| panic!("{name} {end}: {p}"))
            .to_string()
    };
    let canary_starts = at(0, "Start Service", "started_at");
    let canary_healthy = at(0, "Verify Health", "completed_at");
    for host in 1..3 {
        assert!(
            at(host, "Build", "completed_at") <= canary_starts,
            "host {host} built first"
        );
        assert!(
            at(host, "Start Service", "started_at") >= canary_healthy,
            "host {host} waited"
        );
    }
    for h in &f.hosts {
        assert_eq!(
            f.current(h),
            format!("releases/{}", j3["release"].as_str().unwrap())
        );
    }
    let text =
        f.sb.run(&["status", j3["deploy_job_id"].as_str().unwrap()])
            .assert_code(0)
            .stdout
            .clone();
    assert!(text.contains("✓ Verify Health"), "{text}");
    for h in &f.hosts {
        assert!(text.contains(&format!("{} (wave", h.address())), "{text}");
    }

    // Day-2 commands act on every host of the rollout, without --host.
    let config = f.config.to_str().unwrap();
    let out = f.sb.run(&["--config", config, "stop", &f.name]);
    out.assert_code(0);
    for h in &f.hosts {
        assert!(out.stdout.contains(&h.address()), "{}", out.stdout);
    }
    assert_eq!(f.versions(), [None, None, None]);
    f.sb.run(&["--config", config, "check", &f.name])
        .assert_code(4);
    f.sb.run(&["--config", config, "start", &f.name])
        .assert_code(0);
    assert_eq!(f.versions(), [v("v3"), v("v3"), v("v3")]);
    // The monitor reads each host's resources over SSH.
    let mon = f.sb.run(&["--config", config, "--json", "monitor"]);
    mon.assert_code(0);
    let snap = mon.json();
    let hosts = snap["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3, "{snap:#}");
    for (h, host) in hosts.iter().zip(&f.hosts) {
        assert_eq!(h["host"], host.address().as_str());
        assert!(h["memory_total_bytes"].as_u64().unwrap() > 0, "{h}");
        assert!(h["disk_total_bytes"].as_u64().unwrap() > 0, "{h}");
    }
    assert_eq!(snap["services"].as_array().unwrap().len(), 3);
    let check = f.sb.run(&["--config", config, "check", &f.name]);
    check.assert_code(0);
    assert_eq!(check.stdout.lines().count(), 3, "{}", check.stdout);
    let back =
        f.sb.run(&["--config", config, "--json", "rollback", &f.name])
            .assert_code(0)
            .json();
    assert_eq!(back["release"], j1["release"], "{back}");
    assert_eq!(f.versions(), [v("v1"), v("v1"), v("v1")]);
}

#[test]
fn a_host_killed_mid_build_stops_the_rollout_before_any_host_starts_it() {
    if !image_ready() {
        return;
    }
    let f = Fleet::new();
    f.deploy(&f.service("hello", "v1", ""), &[]).assert_code(0);

    // v2 builds slowly (a build command that sleeps); every host builds at
    // once, and host 2 is killed mid-Build.
    let src = f.service("hello", "v2", "");
    let child =
        f.sb.cmd()
            .args(["--json", "--config", f.config.to_str().unwrap()])
            .args(
                f.hosts
                    .iter()
                    .flat_map(|h| ["--host".to_string(), h.address()]),
            )
            .args([
                "deploy",
                src.to_str().unwrap(),
                "--name",
                &f.name,
                "--port",
                &f.port.to_string(),
            ])
            .args(["--method", "systemd", "--build", "sleep 4"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    let victim = &f.hosts[1];
    eventually(60, "host 2 to start building", || {
        let partial = victim.exec(&[
            "sh",
            "-c",
            &format!("ls /srv/deployer/{}/releases | wc -l", f.name),
        ]);
        (partial.trim() == "2").then_some(())
    });
    std::process::Command::new("docker")
        .args(["kill", &victim.name])
        .output()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let code = out.status.code();
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a job");
    assert_ne!(code, Some(0));
    let hosts = job["hosts"].as_array().unwrap();
    assert_eq!(hosts[1]["status"], "failed");
    let err = hosts[1]["error"].as_str().unwrap();
    assert!(
        err.contains(&victim.address()) && err.contains("connection closed"),
        "{err}"
    );
    // Nobody started v2: the others were prepared, then cleaned up.
    for i in [0, 2] {
        assert_eq!(hosts[i]["status"], "skipped", "{:#}", hosts[i]);
        let releases = f.hosts[i].exec(&["ls", &format!("/srv/deployer/{}/releases", f.name)]);
        assert_eq!(
            releases.lines().count(),
            1,
            "v2 removed from {}",
            f.hosts[i].name
        );
    }
    let versions = f.versions();
    assert_eq!(versions[0], v("v1"), "the canary never started v2");
    assert_eq!(versions[1], None, "the killed host answers nothing");
    assert_eq!(versions[2], v("v1"));
    // No lock left behind, here or on the surviving hosts.
    let lock =
        f.sb.state_dir()
            .join("services")
            .join(&f.name)
            .join("deploy.lock");
    assert_eq!(std::fs::read_to_string(lock).unwrap_or_default(), "");
    for h in [&f.hosts[0], &f.hosts[2]] {
        let held = h.exec(&[
            "sh",
            "-c",
            &format!(
                "test -e /srv/deployer/{}/deploy.lock.d && echo held",
                f.name
            ),
        ]);
        assert_eq!(held.trim(), "", "{}", h.name);
    }
}

#[test]
fn behind_each_hosts_proxy_a_rollout_drops_no_request() {
    if !image_ready() {
        return;
    }
    let f = Fleet::new();
    let proxy = format!("[proxy]\nport = {}\ndrain_secs = 1\n", f.port);
    f.deploy(&f.service("hello", "v1", &proxy), &[])
        .assert_code(0);
    assert_eq!(f.versions(), [v("v1"), v("v1"), v("v1")]);
    // A steady stream of requests to every host's proxy during two rollouts.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loads: Vec<_> = f
        .hosts
        .iter()
        .map(|h| {
            let (ip, port, stop) = (h.ip.clone(), f.port, stop.clone());
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match http_get_at(&ip, port, "/version") {
                        Some((200, _)) => ok += 1,
                        other => failed.push(other),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    for version in ["v2", "v3"] {
        f.deploy(&f.service("hello", version, &proxy), &[])
            .assert_code(0);
        assert_eq!(f.versions(), [v(version), v(version), v(version)]);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for (host, load) in f.hosts.iter().zip(loads) {
        let (ok, failed) = load.join().unwrap();
        assert!(failed.is_empty(), "{}: {failed:?}", host.name);
        assert!(ok > 20, "{}: {ok} requests", host.name);
    }
}

/// Not a test: the fleet benchmark `scripts/bench fleet` runs (ignored
/// otherwise). One systemd deploy of the prebuilt example to 1, 3 and 8
/// hosts (canary 1, parallel 4), a first deploy then three redeploys each;
/// prints the redeploys' median as `RESULT fleet_N SECONDS`. Nothing is
/// asserted about time.
#[test]
#[ignore]
fn fleet_benchmark() {
    if !image_ready() {
        return;
    }
    let sb = Sandbox::new();
    let port = free_port();
    let key = client_key(sb.dir.path());
    let hosts: Vec<TestHost> = (2..=9)
        .map(|i| {
            let name = sb.name(&format!("bench{i}"));
            TestHost::start_on(&format!("127.0.0.{i}"), &name, &key, &[port])
        })
        .collect();
    let config = sb.dir.path().join("deployer.toml");
    std::fs::write(&config, format!("[target]\n{}", ssh_settings(&sb, &key))).unwrap();
    // One service (one port), on more hosts each time.
    let name = sb.name("fleet");
    for n in [1usize, 3, 8] {
        let mut times = Vec::new();
        for round in 0..4 {
            let src = sb.prebuilt("hello", &format!("n{n}r{round}"));
            let mut args = vec!["--config".to_string(), config.to_str().unwrap().to_string()];
            for h in &hosts[..n] {
                args.extend(["--host".to_string(), h.address()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let started = std::time::Instant::now();
            let job = sb
                .deploy(&src, &name, port, "systemd", &args)
                .assert_code(0)
                .json();
            if round > 0 {
                times.push(started.elapsed().as_secs_f64());
            }
            if round == 3 {
                let phases: Vec<String> = job["phases"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| format!("{} {}", p["phase"], p["duration_ms"]))
                    .collect();
                println!("PHASES fleet_{n} {}", phases.join(", "));
            }
        }
        times.sort_by(f64::total_cmp);
        println!("RESULT fleet_{n} {:.3}", times[times.len() / 2]);
    }
}
