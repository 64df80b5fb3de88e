//! A two-node Docker Swarm on this machine: this machine's engine is the
//! manager, a second engine in a network namespace (10.231.0.2, over a
//! veth pair) joins as a worker, and a registry (Debian's docker-registry)
//! listens on 10.231.0.1:5000 for both. Torn down when dropped: both
//! engines leave the swarm, the worker's engine and the registry stop, the
//! namespace goes. Needs root; the manager's engine must accept the
//! registry over plain HTTP (scripts/docker-up starts it so).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REGISTRY: &str = "10.231.0.1:5000";
const NETNS: &str = "dpsw2";

pub struct Swarm {
    dir: PathBuf,
    worker: Child,
    registry: Child,
}

fn sh(script: &str) -> (bool, String) {
    let out = Command::new("sh")
        .args(["-c", script])
        .output()
        .expect("sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[track_caller]
fn must(script: &str) -> String {
    let (ok, out) = sh(script);
    assert!(ok, "{script}\n{out}");
    out
}

fn wait(secs: u64, what: &str, script: &str) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !sh(script).0 {
        assert!(Instant::now() < deadline, "{what} within {secs} s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Swarm {
    /// The worker's engine, for `docker -H`.
    pub fn worker_host(&self) -> String {
        format!("unix://{}/docker.sock", self.dir.display())
    }

    /// Sets the swarm up; None (the test is skipped) without root or the
    /// registry program, unless Docker tests are required.
    pub fn up() -> Option<Swarm> {
        let required = std::env::var("DEPLOYER_REQUIRE_DOCKER").is_ok_and(|v| v == "1");
        let missing = if unsafe { libc::geteuid() } != 0 {
            Some("a two-node swarm needs root (network namespaces)")
        } else if !sh("command -v docker-registry").0 {
            Some("docker-registry is not installed (apt-get install docker-registry)")
        } else if !sh("docker info --format '{{.RegistryConfig.InsecureRegistryCIDRs}}' | grep -q 10.231.0.0/24").0 {
            Some("the Docker engine does not take the test registry 10.231.0.1:5000 over HTTP: start it with scripts/docker-up")
        } else {
            None
        };
        if let Some(why) = missing {
            assert!(!required, "DEPLOYER_REQUIRE_DOCKER=1 but {why}");
            super::skipped(why);
            return None;
        }
        let dir = PathBuf::from("/tmp/deployer-swarm-test");
        Self::clean(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        must(&format!(
            "ip netns add {NETNS} && ip link add dpswv1 type veth peer name dpswv2 \
             && ip link set dpswv2 netns {NETNS} && ip addr add 10.231.0.1/24 dev dpswv1 \
             && ip link set dpswv1 up && ip netns exec {NETNS} sh -c \
             'ip addr add 10.231.0.2/24 dev dpswv2 && ip link set dpswv2 up && ip link set lo up'"
        ));
        // `ip netns exec` remounts /sys; the worker's engine needs cgroups.
        let d = dir.display();
        let worker = Command::new("ip")
            .args(["netns", "exec", NETNS, "sh", "-c"])
            .arg(format!(
                "mount -t cgroup2 none /sys/fs/cgroup && exec dockerd --data-root {d}/data \
                 --exec-root {d}/exec --pidfile {d}/docker.pid -H unix://{d}/docker.sock \
                 --bridge=none --iptables=false --insecure-registry {REGISTRY}"
            ))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("worker.log")).unwrap())
            .spawn()
            .expect("worker dockerd");
        std::fs::write(
            dir.join("registry.yml"),
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {d}/registry\n\
                 http:\n  addr: {REGISTRY}\n"
            ),
        )
        .unwrap();
        let registry = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("registry.yml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
            .spawn()
            .expect("docker-registry");
        let swarm = Swarm {
            dir,
            worker,
            registry,
        };
        let w = swarm.worker_host();
        wait(
            60,
            "the worker's engine answers",
            &format!("docker -H {w} info >/dev/null 2>&1"),
        );
        wait(
            10,
            "the registry answers",
            &format!("curl -sf http://{REGISTRY}/v2/ >/dev/null"),
        );
        must("docker swarm init --advertise-addr 10.231.0.1 >/dev/null");
        must(&format!(
            "docker -H {w} swarm join --token \"$(docker swarm join-token -q worker)\" 10.231.0.1:2377"
        ));
        wait(
            30,
            "two ready nodes",
            "[ \"$(docker node ls --format '{{.Status}}' | grep -c Ready)\" = 2 ]",
        );
        Some(swarm)
    }

    /// The node ids of the swarm.
    pub fn nodes(&self) -> Vec<String> {
        must("docker node ls --format '{{.ID}}'")
            .split_whitespace()
            .map(String::from)
            .collect()
    }

    /// Leftovers of an earlier run that did not finish.
    fn clean(dir: &std::path::Path) {
        let d = dir.display();
        sh(&format!(
            "docker swarm leave --force >/dev/null 2>&1; \
             [ -f {d}/docker.pid ] && kill $(cat {d}/docker.pid) 2>/dev/null; \
             pkill -f 'docker-registr[y] serve {d}/'; sleep 1; \
             ip netns del {NETNS} 2>/dev/null; ip link del dpswv1 2>/dev/null; \
             umount {d}/exec/netns/* 2>/dev/null; rm -rf {d}"
        ));
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        sh(&format!(
            "docker -H {} swarm leave --force >/dev/null 2>&1",
            self.worker_host()
        ));
        sh(
            "docker ps -aq --filter label=deployer.swarm-proxy | xargs -r docker rm -f >/dev/null 2>&1",
        );
        let _ = self.registry.kill();
        let _ = self.registry.wait();
        Self::clean(&self.dir);
        let _ = self.worker.kill();
        let _ = self.worker.wait();
    }
}
