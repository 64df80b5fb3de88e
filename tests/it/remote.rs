//! Deploying over SSH: a real sshd on loopback in front of this machine's
//! Docker engine (the "server" is this machine reached through SSH, so the
//! whole path — host keys, SFTP, remote commands — is real).

use crate::common::sshd::Sshd;
use crate::common::*;
use std::path::{Path, PathBuf};

struct Remote {
    sb: Sandbox,
    sshd: Sshd,
    base: PathBuf,
    config: PathBuf,
}

impl Remote {
    fn new() -> Remote {
        let sb = Sandbox::new();
        let sshd = Sshd::start(&sb.dir.path().join("sshd"));
        let base = sb.dir.path().join("remote-base");
        let config = sb.dir.path().join("deployer.toml");
        std::fs::write(
            &config,
            format!(
                "[target]\nhost = \"{}\"\nssh_key = {:?}\nknown_hosts = {:?}\nbase_dir = {:?}\naccept_new_host_key = true\n",
                sshd.address(),
                sshd.client_key(),
                sb.dir.path().join("known_hosts"),
                base
            ),
        )
        .unwrap();
        Remote {
            sb,
            sshd,
            base,
            config,
        }
    }

    fn service(&self, example: &str, version: &str) -> PathBuf {
        self.sb.prebuilt(example, version)
    }

    fn deploy(&self, src: &Path, name: &str, port: u16) -> Run {
        self.sb.deploy(
            src,
            name,
            port,
            "docker",
            &["--config", self.config.to_str().unwrap()],
        )
    }

    fn releases_on_server(&self, name: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.base.join(name).join("releases"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

#[test]
fn docker_over_ssh_v1_v2_and_a_failed_v3_rolled_back() {
    if !require_docker() {
        return;
    }
    let r = Remote::new();
    let name = &r.sb.name("rdk");
    let port = free_port();
    let j1 = r
        .deploy(&r.service("hello", "v1"), name, port)
        .assert_code(0)
        .json();
    assert_eq!(version_on(port).as_deref(), Some("v1"));
    assert!(
        phase(&j1, "Validation")["details"]
            .as_str()
            .unwrap()
            .contains(&r.sshd.address())
    );
    // The release landed in the base directory on the server, current points at it.
    let current = std::fs::read_link(r.base.join(name).join("current")).unwrap();
    assert_eq!(
        current,
        Path::new("releases").join(j1["release"].as_str().unwrap())
    );
    assert!(
        r.base
            .join(name)
            .join("releases")
            .join(j1["release"].as_str().unwrap())
            .join("hello")
            .is_file()
    );

    let j2 = r
        .deploy(&r.service("hello", "v2"), name, port)
        .assert_code(0)
        .json();
    assert_eq!(version_on(port).as_deref(), Some("v2"));
    assert_eq!(j2["service_url"], format!("http://127.0.0.1:{port}"));

    let bad = r.deploy(&r.service("broken/never-healthy", "v3"), name, port);
    bad.assert_code(4);
    assert_eq!(bad.json()["rollback"]["success"], true);
    assert_eq!(version_on(port).as_deref(), Some("v2"), "v2 still answers");
    assert_eq!(containers_of(name).len(), 1);
    assert_eq!(
        r.releases_on_server(name).len(),
        2,
        "the failed release was removed from the server"
    );

    let rb =
        r.sb.run(&[
            "--config",
            r.config.to_str().unwrap(),
            "--json",
            "rollback",
            name,
        ])
        .assert_code(0)
        .json();
    assert_eq!(rb["release"], j1["release"]);
    assert_eq!(version_on(port).as_deref(), Some("v1"));
}

#[test]
fn a_swapped_host_key_refuses_the_deploy_and_transfers_nothing() {
    let mut r = Remote::new();
    let name = &r.sb.name("mitm");
    let port = free_port();
    // First contact records the key (accept-new) — with docker absent the
    // deploy may fail later, but the key is learned at Validation.
    let src = r.service("hello", "v1");
    let _ = r.deploy(&src, name, port);
    let known = std::fs::read_to_string(r.sb.dir.path().join("known_hosts")).unwrap();
    assert!(known.contains("ssh-ed25519"));
    let before = r.releases_on_server(name);
    let jobs_before = r.sb.run(&["--json", "history", name]).stdout;

    r.sshd.swap_host_key();
    let refused = r.deploy(&src, name, port);
    refused.assert_code(8);
    assert!(
        refused.stderr.contains("HOST KEY CHANGED"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        refused.stderr.matches("SHA256:").count(),
        2,
        "both fingerprints: {}",
        refused.stderr
    );
    assert_eq!(r.releases_on_server(name), before, "nothing transferred");
    assert_eq!(
        r.sb.run(&["--json", "history", name]).stdout,
        jobs_before,
        "no job was started"
    );
}

#[test]
fn changing_one_file_of_a_2000_file_service_uploads_only_that_file() {
    if !require_docker() {
        return;
    }
    let r = Remote::new();
    let name = &r.sb.name("big");
    let port = free_port();
    let src = r.service("hello", "v1");
    let assets = src.join("assets");
    for i in 0..2000 {
        let dir = assets.join(format!("d{}", i / 100));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}.txt")), format!("asset {i}\n")).unwrap();
    }
    let first = r.deploy(&src, name, port).assert_code(0).json();
    let files = first["transfer"]["files"].as_u64().unwrap();
    assert!(files > 2000, "{:#}", first["transfer"]);
    assert_eq!(
        first["transfer"]["uploaded_files"], files,
        "first deploy uploads everything"
    );

    std::fs::write(assets.join("d7/f777.txt"), "changed\n").unwrap();
    std::fs::remove_file(assets.join("d3/f300.txt")).unwrap();
    let second = r.deploy(&src, name, port).assert_code(0).json();
    assert_eq!(
        second["transfer"]["uploaded_files"], 1,
        "{:#}",
        second["transfer"]
    );
    assert_eq!(second["transfer"]["uploaded_bytes"], 8);
    assert_eq!(second["transfer"]["linked_files"], files - 2);
    let release = r
        .base
        .join(name)
        .join("releases")
        .join(second["release"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(release.join("assets/d7/f777.txt")).unwrap(),
        "changed\n"
    );
    assert_eq!(
        std::fs::read_to_string(release.join("assets/d0/f1.txt")).unwrap(),
        "asset 1\n"
    );
    assert!(
        !release.join("assets/d3/f300.txt").exists(),
        "a deleted file is gone"
    );
    // The previous release is untouched by the new one's changes.
    let previous = r
        .base
        .join(name)
        .join("releases")
        .join(first["release"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(previous.join("assets/d7/f777.txt")).unwrap(),
        "asset 777\n"
    );
    assert!(previous.join("assets/d3/f300.txt").exists());
    // Executables stay executable (the deploy-ops seed's chmod +x lesson).
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(release.join("hello"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "{mode:o}");
    assert_eq!(version_on(port).as_deref(), Some("v1"));
}

#[test]
fn the_lock_on_the_host_refuses_a_second_deployer_and_a_stale_one_is_taken_over() {
    if !require_docker() {
        return;
    }
    let r = Remote::new();
    let name = &r.sb.name("rlock");
    let port = free_port();
    let src = r.service("hello", "v1");
    // Another deployer, on another machine, holds the lock on the host.
    let lock_dir = r.base.join(name).join("deploy.lock.d");
    std::fs::create_dir_all(&lock_dir).unwrap();
    let holder = r#"{"job_id":"deploy-elsewhere","pid":4242,"actor":"ops@laptop","since":"2026-11-25T10:00:00Z"}"#;
    std::fs::write(lock_dir.join("holder.json"), holder).unwrap();
    let refused = r.deploy(&src, name, port);
    refused.assert_code(11);
    assert!(
        refused.stderr.contains("deploy-elsewhere") && refused.stderr.contains("ops@laptop"),
        "{}",
        refused.stderr
    );
    assert!(r.releases_on_server(name).is_empty(), "nothing transferred");

    // Its deployer died: the lock has not been refreshed for minutes.
    let old = std::process::Command::new("touch")
        .args(["-d", "10 minutes ago"])
        .arg(lock_dir.join("holder.json"))
        .status()
        .unwrap();
    assert!(old.success());
    let job = r.deploy(&src, name, port).assert_code(0).json();
    assert_eq!(version_on(port).as_deref(), Some("v1"));
    assert!(!lock_dir.exists(), "the lock is released after the job");
    let audit = std::fs::read_to_string(r.base.join(name).join("audit.log")).unwrap();
    assert!(
        audit.contains(job["deploy_job_id"].as_str().unwrap()),
        "{audit}"
    );
}

/// A sweep after a crash takes the host's lock too: while a deployer on
/// another machine holds it (its release may be running and not current
/// yet), nothing of the service is stopped; once the lock is free, the
/// release that is neither current nor draining is.
#[test]
fn a_sweep_leaves_a_host_alone_while_another_deployer_holds_its_lock() {
    if !require_docker() {
        return;
    }
    let r = Remote::new();
    let name = &r.sb.name("rsweep");
    let (port, other_port) = (free_port(), free_port());
    let j1 = r
        .deploy(&r.service("hello", "v1"), name, port)
        .assert_code(0)
        .json();
    r.deploy(&r.service("hello", "v2"), name, port)
        .assert_code(0);
    // v1 runs again beside current v2, on another port: in flight for a
    // deployer elsewhere.
    let r1 = j1["release"].as_str().unwrap();
    let container = format!("{name}-{r1}");
    let _ = docker(&["rm", "-f", &container]);
    docker(&[
        "run",
        "-d",
        "--name",
        &container,
        "--label",
        &format!("deployer.service={name}"),
        "--label",
        &format!("deployer.release={r1}"),
        "--label",
        &format!("deployer.port={other_port}"),
        "-e",
        &format!("PORT={other_port}"),
        "-p",
        &format!("{other_port}:{other_port}"),
        &format!("{name}:{r1}"),
    ]);
    let running = || {
        let names = docker(&[
            "ps",
            "--filter",
            &format!("name=^{container}$"),
            "--format",
            "{{.Names}}",
        ]);
        names.trim() == container
    };
    assert!(running());
    // A drain of the service is overdue: the next command sweeps.
    let marker =
        r.sb.state_dir()
            .join("services")
            .join(name)
            .join("draining");
    std::fs::write(&marker, "1000").unwrap();
    let lock_dir = r.base.join(name).join("deploy.lock.d");
    std::fs::create_dir_all(&lock_dir).unwrap();
    let holder = r#"{"job_id":"deploy-elsewhere","pid":4242,"actor":"ops@laptop","since":"2026-11-25T10:00:00Z"}"#;
    std::fs::write(lock_dir.join("holder.json"), holder).unwrap();
    let config = r.config.to_str().unwrap();
    let said = r.sb.run(&["--config", config, "history", name]);
    said.assert_code(0);
    assert!(said.stderr.contains("not recovered yet"), "{}", said.stderr);
    assert!(
        running(),
        "the sweep stopped a release while another deployer held the host"
    );
    std::fs::remove_dir_all(&lock_dir).unwrap();
    let said = r.sb.run(&["--config", config, "history", name]);
    said.assert_code(0);
    assert!(!running(), "the stray release still runs: {}", said.stderr);
    assert_eq!(version_on(port).as_deref(), Some("v2"));
}
