//! Crashes are boring: fault injection in the manner of a Jepsen run. For
//! each method, rounds of: start a redeploy, SIGKILL deployer at a seeded
//! random moment, run one ordinary command, then check what a user sees:
//!
//! - the public port answers a version that was deployed;
//! - no job reads `running` or `pending`;
//! - the next deploy succeeds and the port then answers *its* version;
//! - after `stop`, no process, container or unit of the service remains.
//!
//! The seed is printed; `DEPLOYER_CRASH_SEED=N` replays a failure, and
//! `DEPLOYER_CRASH_ROUNDS` changes the number of rounds (20 by default).

use crate::common::testhost::{TestHost, client_key, config_for, image_ready};
use crate::common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A small seeded generator (xorshift64*): the same seed, the same kills.
struct Rng(u64);

impl Rng {
    fn seeded(what: &str) -> Rng {
        let seed = std::env::var("DEPLOYER_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    % 1_000_000
            });
        eprintln!("{what}: DEPLOYER_CRASH_SEED={seed}");
        Rng(seed.wrapping_mul(2_654_435_761).max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn rounds() -> usize {
    std::env::var("DEPLOYER_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

/// What of a service still runs, by name.
type Remains<'a> = dyn Fn(&str) -> Vec<String> + 'a;
/// The release a service's `current` names, by name.
type Current<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// One method under test: how to deploy, where the public port is, and
/// what of the service still runs.
struct Target<'a> {
    sb: &'a Sandbox,
    name: String,
    src: std::path::PathBuf,
    port: u16,
    public: u16,
    /// Global flags (a config for a test host).
    global: Vec<String>,
    /// Deploy flags beyond name, port, method and env.
    method: Vec<String>,
    /// What of the service runs (processes, containers, units).
    remains: Box<Remains<'a>>,
    /// The release `current` names on the host.
    current: Box<Current<'a>>,
}

impl Target<'_> {
    fn deploy_cmd(&self, tag: &str) -> Command {
        let mut c = self.sb.cmd();
        c.args(&self.global)
            .args(["--json", "deploy"])
            .arg(&self.src)
            .args(["--name", &self.name, "--port", &self.port.to_string()])
            .args(&self.method)
            .args(["--env", &format!("ROUND={tag}")]);
        c
    }

    fn deploy(&self, tag: &str) -> Run {
        self.sb.track(&self.name);
        let out = self.deploy_cmd(tag).output().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn run(&self, args: &[&str]) -> Run {
        let mut all: Vec<&str> = self.global.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        self.sb.run(&all)
    }

    /// What the public port says its round is.
    fn answers(&self) -> Option<String> {
        self.says("/env/ROUND")
    }

    /// What the public port answers at `path` (200 only).
    fn says(&self, path: &str) -> Option<String> {
        http_get(self.public, path)
            .filter(|(code, _)| *code == 200)
            .map(|(_, b)| b.trim().to_string())
    }
}

/// The rounds, then `stop`: nothing of the service may remain.
fn crash_rounds(t: &Target<'_>, what: &str) {
    let mut rng = Rng::seeded(what);
    let first = Instant::now();
    t.deploy("r0").assert_code(0);
    // Kills land anywhere in a deploy as long as the first one took, and a
    // little after.
    let window = (first.elapsed().as_millis() as u64 * 12 / 10).max(300);
    assert_eq!(t.answers().as_deref(), Some("r0"));
    let mut deployed = vec!["r0".to_string()];
    let ordinary: [&[&str]; 4] = [
        &["history", &t.name],
        &["releases", &t.name],
        &["check", &t.name],
        &["--json", "history", &t.name],
    ];
    for round in 1..=rounds() {
        let killed = format!("k{round}");
        deployed.push(killed.clone());
        let at = rng.below(window);
        let mut child = t
            .deploy_cmd(&killed)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(at));
        // SIGKILL: no handler runs, nothing is cleaned up.
        let _ = child.kill();
        let _ = child.wait();
        let command = ordinary[rng.below(ordinary.len() as u64) as usize];
        let said = t.run(command);
        let context = format!("{what} round {round}, killed at {at} ms, then {command:?}");
        let answer = t.answers();
        assert!(
            answer.as_ref().is_some_and(|a| deployed.contains(a)),
            "{context}: the public port answers {answer:?}, not a deployed version\n{}{}",
            said.stdout,
            said.stderr
        );
        // And it is the release `current` names, not a stray.
        let current = (t.current)(&t.name);
        assert_eq!(
            t.says("/env/RELEASE"),
            current,
            "{context}: the public port answers another release than current\n{}{}",
            said.stdout,
            said.stderr
        );
        let history = t.run(&["--json", "history", &t.name]).json();
        for job in history.as_array().unwrap() {
            let status = job["status"].as_str().unwrap();
            assert!(
                status != "running" && status != "pending",
                "{context}: job {} reads {status}",
                job["deploy_job_id"]
            );
        }
        let next = format!("n{round}");
        let run = t.deploy(&next);
        assert_eq!(
            run.code, 0,
            "{context}: the next deploy\n{}{}",
            run.stdout, run.stderr
        );
        assert_eq!(
            t.answers().as_deref(),
            Some(next.as_str()),
            "{context}: the next deploy succeeded, so its release answers"
        );
        deployed.push(next);
    }
    t.run(&["stop", &t.name]).assert_code(0);
    // A drain ends by itself; stop ends it at once.
    let left = (t.remains)(&t.name);
    assert!(
        left.is_empty(),
        "{what}: after stop, still running: {left:?}"
    );
}

/// The service's health answers 503 for its first second: kills land in
/// Verify Health too.
fn warm_up() -> Vec<String> {
    vec!["--env".into(), "WARMUP_SECS=1".into()]
}

/// The prebuilt example deployed with `method` (and `extra` flags) on a
/// free port of this machine; what remains is its processes, `current` is
/// read from the sandbox's state (a test on a server replaces both).
fn target<'a>(sb: &'a Sandbox, method: &str, extra: &[&str]) -> Target<'a> {
    let port = free_port();
    let src = sb.prebuilt("hello", "v1");
    let mut method = vec!["--method".to_string(), method.to_string()];
    method.extend(warm_up());
    method.extend(extra.iter().map(|s| s.to_string()));
    Target {
        sb,
        name: sb.name("crash"),
        src,
        port,
        public: port,
        global: Vec::new(),
        method,
        remains: Box::new(|name| {
            service_pids(name)
                .into_iter()
                .map(|p| format!("pid {p}"))
                .collect()
        }),
        current: Box::new(|name| sb.current(name)),
    }
}

#[test]
fn process_redeploys_killed_at_random_moments() {
    let sb = Sandbox::new();
    let t = target(&sb, "process", &[]);
    crash_rounds(&t, "process");
}

#[test]
fn process_behind_the_proxy_redeploys_killed_at_random_moments() {
    let sb = Sandbox::new();
    let public = free_port();
    let mut t = target(&sb, "process", &["--proxy-port", &public.to_string()]);
    t.public = public;
    crash_rounds(&t, "process behind the proxy");
    // The proxy itself is deployer's, shared by services: it stays.
}

#[test]
fn docker_redeploys_killed_at_random_moments() {
    if !require_docker() {
        return;
    }
    let sb = Sandbox::new();
    let mut t = target(&sb, "docker", &[]);
    t.remains = Box::new(|name| {
        docker(&[
            "ps",
            "--filter",
            &format!("label=deployer.service={name}"),
            "--format",
            "{{.Names}}",
        ])
        .lines()
        .map(str::to_string)
        .collect()
    });
    crash_rounds(&t, "docker");
}

#[test]
fn systemd_over_ssh_redeploys_killed_at_random_moments() {
    if !image_ready() {
        return;
    }
    let sb = Sandbox::new();
    let port = free_port();
    let host = TestHost::start(&sb.name("crash"), &client_key(sb.dir.path()), &[port]);
    let mut t = target(&sb, "systemd", &[]);
    (t.port, t.public) = (port, port);
    t.global = vec!["--config".into(), config_for(&sb, &host)];
    let host_ref = &host;
    t.remains = Box::new(move |name| {
        host_ref
            .exec(&[
                "sh",
                "-c",
                &format!(
                    "systemctl list-units --plain --no-legend --state=active \
                     'deployer-{name}-*' | cut -d' ' -f1"
                ),
            ])
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    });
    t.current = Box::new(move |name| {
        let link = host_ref.exec(&["readlink", &format!("/srv/deployer/{name}/current")]);
        link.trim().strip_prefix("releases/").map(str::to_string)
    });
    crash_rounds(&t, "systemd over SSH");
}

/// A release whose start command leaves its process group (a daemon that
/// double-forks) answers health checks from a process deployer did not
/// start for it: Verify Health says so, naming the process, instead of
/// calling the deploy healthy.
#[test]
fn a_port_answered_by_a_process_outside_the_release_fails_verify_health() {
    let sb = Sandbox::new();
    let port = free_port();
    let name = sb.tracked("escapes");
    let src = sb.prebuilt("hello", "v1");
    let run = sb.deploy(
        &src,
        &name,
        port,
        "process",
        &["--start", "setsid ./hello & sleep 600"],
    );
    run.assert_code(4);
    let job = run.json();
    let health = phase(&job, "Verify Health");
    let error = health["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("port {port} is answered by pid")) && error.contains("hello"),
        "{health:#}"
    );
    assert!(
        error.contains(job["release"].as_str().unwrap()),
        "the error names the release: {error}"
    );
    // The escaped daemon is the test's to end (deployer could not see it).
    for pid in service_pids(&name) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// A drain whose drainer died (the host rebooted, someone killed it) ends
/// anyway: the next command on the service, once the deadline is past,
/// stops the drained release.
#[test]
fn a_drain_whose_drainer_died_is_ended_by_the_next_command() {
    let sb = Sandbox::new();
    let (port, public) = (free_port(), free_port());
    let name = sb.tracked("drained");
    let public_flag = public.to_string();
    let flags = ["--proxy-port", public_flag.as_str()];
    let v1 = sb.prebuilt("hello", "v1");
    add_to_manifest(&v1, "[proxy]\ndrain_secs = 5\n");
    sb.deploy(&v1, &name, port, "process", &flags)
        .assert_code(0);
    let before = service_pids(&name);
    assert!(!before.is_empty());
    let v2 = sb.prebuilt("hello", "v2");
    add_to_manifest(&v2, "[proxy]\ndrain_secs = 5\n");
    let first = sb
        .deploy(&v2, &name, port, "process", &flags)
        .assert_code(0)
        .json();
    let r1 = sb
        .run(&["--json", "history", &name])
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find_map(|j| (j["deploy_job_id"] != first["deploy_job_id"]).then(|| j["release"].clone()))
        .unwrap();
    let r1 = r1.as_str().unwrap();
    // The drainer of r1 dies.
    let killed = Command::new("pkill")
        .args(["-KILL", "-f", &format!("sleep 5; .*releases/{r1}")])
        .status()
        .unwrap();
    assert!(killed.success(), "the drainer of {r1} was running");
    // Past its deadline (and the few seconds' slack) r1 still runs…
    std::thread::sleep(Duration::from_secs(11));
    assert!(
        before.iter().any(|p| service_pids(&name).contains(p)),
        "r1 runs on with no drainer"
    );
    // …until the next command on the service.
    sb.run(&["history", &name]).assert_code(0);
    let left: Vec<i32> = before
        .iter()
        .filter(|p| service_pids(&name).contains(p))
        .copied()
        .collect();
    assert!(left.is_empty(), "r1's processes {left:?} still run");
    assert_eq!(version_on(public).as_deref(), Some("v2"));
}

/// `serve` killed with one job running and five queued: after a restart
/// every job has ended (none stays pending or running), the service
/// answers, and the next deploy through the API succeeds.
#[test]
fn serve_killed_with_a_running_and_five_queued_jobs() {
    let sb = Sandbox::new();
    let port = free_port();
    let src = sb.prebuilt("hello", "v1");
    let name = sb.tracked("crashapi");
    let body = |tag: &str| {
        serde_json::json!({
            "service_name": name,
            "service_path": src,
            "service_port": port,
            "deployment_method": "process",
            "environment_vars": {"ROUND": tag, "WARMUP_SECS": "2"},
            "auto_register": false,
        })
        .to_string()
    };
    let mut server = server::Server::start(&sb, sb.dir.path(), &[]);
    let (code, first) = server.post("/deploy", Some(&body("a0")));
    assert_eq!(code, 202, "{first}");
    let id = first["deploy_job_id"].as_str().unwrap().to_string();
    eventually(60, "the first deploy", || {
        let (_, job) = server.get(&format!("/deploy/{id}"));
        (job["status"] == "completed").then_some(())
    });
    let mut ids = Vec::new();
    for i in 1..=6 {
        let (code, job) = server.post("/deploy", Some(&body(&format!("a{i}"))));
        assert_eq!(code, 202, "{job}");
        ids.push(job["deploy_job_id"].as_str().unwrap().to_string());
    }
    // The first of them is in Verify Health (a 2 s warm-up), the rest wait.
    eventually(30, "a job running", || {
        let (_, job) = server.get(&format!("/deploy/{}", ids[0]));
        (job["status"] == "running").then_some(())
    });
    std::thread::sleep(Duration::from_millis(700));
    server.kill();
    // Before any restart, a reader already sees the jobs ended.
    for id in &ids {
        let job = sb.run(&["--json", "status", id]).assert_code(0).json();
        assert_eq!(job["status"], "failed", "{job:#}");
        assert_eq!(job["failure"], "interrupted", "{job:#}");
        assert!(
            job["error"].as_str().unwrap().contains("stopped before"),
            "the reason is said: {job:#}"
        );
    }
    let server = server::Server::start(&sb, sb.dir.path(), &[]);
    // The service answers (recovery at start brings current back), and
    // what answers is the release `current` names.
    eventually(30, "current answering after the restart", || {
        let answer = http_get(port, "/env/RELEASE").filter(|(c, _)| *c == 200)?;
        (Some(answer.1.trim().to_string()) == sb.current(&name)).then_some(())
    });
    let (_, history) = server.get(&format!("/deploy/history/{name}"));
    let jobs = history["jobs"]
        .as_array()
        .or(history.as_array())
        .cloned()
        .unwrap_or_else(|| panic!("{history:#}"));
    for job in &jobs {
        assert!(
            job["status"] != "running" && job["status"] != "pending",
            "{job:#}"
        );
    }
    let (code, again) = server.post("/deploy", Some(&body("b1")));
    assert_eq!(code, 202, "{again}");
    let again = again["deploy_job_id"].as_str().unwrap().to_string();
    let done = eventually(60, "the deploy after the restart", || {
        let (_, job) = server.get(&format!("/deploy/{again}"));
        (job["status"] == "completed" || job["status"] == "failed").then_some(job)
    });
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(
        http_get(port, "/env/ROUND").map(|(_, b)| b),
        Some("b1".to_string())
    );
}

/// The state directory's disk fills up mid-job: a clear error, the old
/// release answers, and the database is consistent afterwards.
#[test]
fn a_full_disk_under_the_state_directory_mid_job() {
    if unsafe_not_root() {
        skipped("a full disk: mounting a small tmpfs needs root");
        return;
    }
    let sb = Sandbox::new();
    let state = sb.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    let mount = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(&state)
        .status()
        .unwrap();
    assert!(mount.success(), "mounting a tmpfs on {}", state.display());
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&state);
    let port = free_port();
    let name = sb.tracked("fulldisk");
    let v1 = sb.prebuilt("hello", "v1");
    sb.deploy(&v1, &name, port, "process", &[]).assert_code(0);
    assert_eq!(version_on(port).as_deref(), Some("v1"));
    // A release bigger than the free space is refused before it is sent.
    let v2 = sb.prebuilt("hello", "v2");
    let free = fs_free(&state);
    std::fs::write(v2.join("blob.bin"), vec![7u8; (free + (4 << 20)) as usize]).unwrap();
    let run = sb.deploy(&v2, &name, port, "process", &[]);
    run.assert_code(5);
    assert!(
        run.stdout.contains("not enough disk space"),
        "{}",
        run.stdout
    );
    std::fs::remove_file(v2.join("blob.bin")).unwrap();
    // Mid-job: the release fits, then its build fills the disk.
    let manifest = v2.join("service.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        format!("build = \"dd if=/dev/zero of=fill bs=1M count=64\"\n{text}"),
    )
    .unwrap();
    let run = sb.deploy(&v2, &name, port, "process", &[]);
    assert_ne!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(
        said.contains("No space left on device"),
        "the error names the full disk: {said}"
    );
    assert_eq!(
        version_on(port).as_deref(),
        Some("v1"),
        "the old release answers"
    );
    // The database is consistent, and every job has ended.
    let check = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
             print(c.execute('PRAGMA integrity_check').fetchone()[0]); \
             print(c.execute(\"SELECT count(*) FROM jobs WHERE status IN ('running','pending')\").fetchone()[0])",
        ])
        .arg(state.join("deployer.db"))
        .output()
        .unwrap();
    let check = String::from_utf8_lossy(&check.stdout).to_string();
    assert_eq!(check.lines().next(), Some("ok"), "{check}");
    let history = sb.run(&["--json", "history", &name]).assert_code(0).json();
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["status"] == "completed" || j["status"] == "failed"),
        "{history:#}"
    );
    // The failed release's files went with it: the next deploy fits.
    std::fs::write(&manifest, text).unwrap();
    sb.deploy(&v2, &name, port, "process", &[]).assert_code(0);
    assert_eq!(version_on(port).as_deref(), Some("v2"));
}

fn unsafe_not_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() != 0 }
}

fn fs_free(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap()
}
