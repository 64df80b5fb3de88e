//! Shared test setup: a sandbox with its own state directory, copies of the
//! example services, free ports, an HTTP GET with a deadline, and clean-up of
//! every process and container a test started. Tests drive the real
//! `deployer` binary against real processes and a real Docker engine.

pub mod load;
pub mod postgres;
pub mod server;
pub mod sshd;
pub mod swarm;
pub mod testhost;

use assert_cmd::cargo::CommandCargoExt;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub struct Sandbox {
    pub dir: tempfile::TempDir,
    /// Services deployed in this sandbox, for clean-up.
    pub names: std::cell::RefCell<Vec<String>>,
}

/// The result of one deployer run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().expect("tempdir"),
            names: Default::default(),
        }
    }

    /// A service name unique to this sandbox, so tests running at once never
    /// see (or clean up) each other's services.
    pub fn name(&self, base: &str) -> String {
        let tag: String = self
            .dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        format!("{base}-{tag}")
    }

    /// [`Sandbox::name`], cleaned up with the sandbox.
    pub fn tracked(&self, base: &str) -> String {
        let name = self.name(base);
        self.track(&name);
        name
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A `deployer` command with this sandbox's state directory and none of
    /// the seeds' environment variables leaking in from the caller.
    pub fn cmd(&self) -> Command {
        let mut c = Command::cargo_bin("deployer").expect("deployer binary");
        c.current_dir(self.dir.path())
            .arg("--state-dir")
            .arg(self.state_dir());
        for k in [
            "DEPLOYER_CONFIG",
            "DEPLOYER_STATE_DIR",
            "REGISTRY_URL",
            "SERVER_HOST",
            "SERVER_USER",
            "SSH_KEY_PATH",
            "DEPLOYMENT_METHOD",
            "DEFAULT_NETWORK",
            "SERVICE_PORT",
        ] {
            c.env_remove(k);
        }
        c.env("NO_COLOR", "1");
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.cmd().args(args).output().expect("run deployer"))
    }

    pub fn run_with(&self, args: &[&str], f: impl FnOnce(&mut Command)) -> Run {
        let mut c = self.cmd();
        c.args(args);
        f(&mut c);
        Run::from(c.output().expect("run deployer"))
    }

    /// Runs a command that must end by itself within `secs` (one that would
    /// run on, like a server that should have refused to start, is killed
    /// and fails the test).
    pub fn run_within(&self, secs: u64, args: &[&str], f: impl FnOnce(&mut Command)) -> Run {
        use std::process::Stdio;
        let mut c = self.cmd();
        c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        f(&mut c);
        let mut child = c.spawn().expect("run deployer");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("deployer {args:?} still ran after {secs} s");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Run::from(child.wait_with_output().unwrap())
    }

    /// Copies an example service (`hello`, `broken/never-healthy`, ...) into
    /// the sandbox, with `version` written to VERSION.
    pub fn service(&self, example: &str, version: &str) -> PathBuf {
        let dest = self
            .dir
            .path()
            .join("src")
            .join(format!("{}-{version}", example.replace('/', "-")));
        copy_dir(&repo().join("examples").join(example), &dest);
        std::fs::write(dest.join("VERSION"), format!("{version}\n")).unwrap();
        dest
    }

    /// An example with its static binary built here (as a CI would), so a
    /// server needs no compiler: the manifest's build command is dropped.
    pub fn prebuilt(&self, example: &str, version: &str) -> PathBuf {
        let dir = self.service(example, version);
        let ok = Command::new("rustc")
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
        assert!(ok, "building {example}");
        let manifest: String = std::fs::read_to_string(dir.join("service.toml"))
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("build ="))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(dir.join("service.toml"), manifest).unwrap();
        dir
    }

    /// Deploys a directory as service `name` on `port` with `method`; extra
    /// flags follow. Adds `--json` so the job can be read back.
    pub fn deploy(&self, path: &Path, name: &str, port: u16, method: &str, extra: &[&str]) -> Run {
        self.deploy_env(path, name, port, method, extra, &[])
    }

    /// [`Sandbox::deploy`] with extra environment for deployer (secrets).
    pub fn deploy_env(
        &self,
        path: &Path,
        name: &str,
        port: u16,
        method: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Run {
        self.track(name);
        let port = port.to_string();
        let mut args = vec![
            "--json",
            "deploy",
            path.to_str().unwrap(),
            "--name",
            name,
            "--port",
            &port,
            "--method",
            method,
        ];
        args.extend_from_slice(extra);
        self.run_with(&args, |c| {
            c.envs(env.iter().copied());
        })
    }

    pub fn track(&self, name: &str) {
        if !self.names.borrow().iter().any(|n| n == name) {
            self.names.borrow_mut().push(name.to_string());
        }
    }

    /// Every file under the state directory, with its size and mtime, to
    /// show that a refused command changed nothing.
    pub fn snapshot(&self) -> Vec<(PathBuf, u64, Option<std::time::SystemTime>)> {
        let mut out = Vec::new();
        walk(&self.state_dir(), &mut |p| {
            let m = std::fs::symlink_metadata(p).unwrap();
            out.push((p.to_path_buf(), m.len(), m.modified().ok()));
        });
        out.sort();
        out
    }

    pub fn current(&self, name: &str) -> Option<String> {
        let link = self.state_dir().join("services").join(name).join("current");
        let target = std::fs::read_link(&link).ok()?;
        let id = target.file_name()?.to_str()?.to_string();
        assert!(
            self.state_dir()
                .join("services")
                .join(name)
                .join("releases")
                .join(&id)
                .is_dir(),
            "current points at a missing release {id}"
        );
        Some(id)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // The proxy (nginx) deployer started for this sandbox's services:
        // its master takes its workers with it.
        let state = self.state_dir().to_string_lossy().into_owned();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.starts_with("nginx: master") && cmdline.contains(&state) {
                // SAFETY: signalling the proxy this sandbox started.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        for name in self.names.borrow().iter() {
            for pid in service_pids(name) {
                // SAFETY: signalling a pid we found by its SERVICE_NAME.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            if docker_available() {
                let ids = docker(&[
                    "ps",
                    "-aq",
                    "--filter",
                    &format!("label=deployer.service={name}"),
                ]);
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f"];
                    args.extend(ids);
                    docker(&args);
                }
                // The network a test asked for, if any.
                docker(&["network", "rm", &format!("{name}-net")]);
                let imgs = docker(&[
                    "images",
                    "-q",
                    "--filter",
                    &format!("label=deployer.service={name}"),
                ]);
                let imgs: Vec<&str> = imgs.split_whitespace().collect();
                if !imgs.is_empty() {
                    let mut args = vec!["rmi", "-f"];
                    args.extend(imgs);
                    docker(&args);
                }
            }
        }
    }
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        f(&p);
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            walk(&p, f);
        }
    }
}

/// Every file below a directory (for searching it).
/// Appends TOML to a service's manifest (a table such as `[tests]`).
pub fn add_to_manifest(src: &Path, toml: &str) {
    let manifest = src.join("service.toml");
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push('\n');
    text.push_str(toml);
    std::fs::write(manifest, text).unwrap();
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk(dir, &mut |p| {
        if p.is_file() {
            out.push(p.to_path_buf());
        }
    });
    out
}

pub fn copy_dir(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for e in std::fs::read_dir(src).unwrap().flatten() {
        let to = dest.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else if e.file_name() != "hello" {
            // (a binary left from a manual build is not part of the example)
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET http://127.0.0.1:PORT/PATH: status code and body, or None when
/// nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get_at("127.0.0.1", port, path)
}

/// GET http://IP:PORT/PATH, for services on other loopback addresses.
pub fn http_get_at(ip: &str, port: u16, path: &str) -> Option<(u16, String)> {
    let addr = std::net::SocketAddr::new(ip.parse().ok()?, port);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// What the service on `port` says its version is (trimmed), or None.
pub fn version_on(port: u16) -> Option<String> {
    http_get(port, "/version").map(|(_, b)| b.trim().to_string())
}

/// Polls until `f` gives Some, or panics after `secs`.
#[track_caller]
pub fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pids of live processes whose environment has SERVICE_NAME=name.
pub fn service_pids(name: &str) -> Vec<i32> {
    let needle = format!("SERVICE_NAME={name}");
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = state
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
        if !zombie && env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn docker_available() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Whether docker tests can run. CI sets DEPLOYER_REQUIRE_DOCKER=1 so a
/// missing engine fails the run instead of skipping.
pub fn require_docker() -> bool {
    if docker_available() {
        return true;
    }
    if std::env::var("DEPLOYER_REQUIRE_DOCKER").is_ok_and(|v| v == "1") {
        panic!("DEPLOYER_REQUIRE_DOCKER=1 but no Docker engine answers");
    }
    skipped("no Docker engine answers (set DEPLOYER_REQUIRE_DOCKER=1 to fail instead)");
    false
}

/// Says a test is skipped, where it is seen: on stderr, and as a line in
/// the file `DEPLOYER_SKIPPED` names (scripts/test counts them in its
/// closing line, since cargo counts a skipped test as passed).
pub fn skipped(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    eprintln!("SKIPPED {test}: {why}");
    if let Ok(path) = std::env::var("DEPLOYER_SKIPPED") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
        {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
}

/// Running containers of a service.
pub fn containers_of(name: &str) -> Vec<String> {
    docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=deployer.service={name}"),
    ])
    .split_whitespace()
    .map(str::to_string)
    .collect()
}

/// A point in time from a job's JSON.
pub type Time = chrono::DateTime<chrono::FixedOffset>;

/// Parses a timestamp from a job's JSON (RFC 3339; compare parsed, not as
/// text: fractions of a second may be left out).
#[track_caller]
pub fn time(v: &serde_json::Value) -> Time {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap_or_else(|e| panic!("not a time: {v}: {e}"))
}

/// The phase named `name` in a job's JSON.
pub fn phase<'a>(job: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    job["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == name)
        .unwrap_or_else(|| panic!("no phase {name} in {job:#}"))
}

/// The step named `step` of the phase named `phase_name` in a job's JSON.
pub fn step<'a>(job: &'a serde_json::Value, phase_name: &str, step: &str) -> &'a serde_json::Value {
    phase(job, phase_name)["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == step)
        .unwrap_or_else(|| panic!("no step {step} in {job:#}"))
}

/// The names in a service's releases directory, sorted.
pub fn releases_on_disk(sb: &Sandbox, name: &str) -> Vec<String> {
    let dir = sb.state_dir().join("services").join(name).join("releases");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    on_disk.sort();
    on_disk
}

/// A tiny real HTTP server on loopback that records request paths and
/// bodies and answers each request as its handler says.
pub struct FakeRegistry {
    pub port: u16,
    pub bodies: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

/// Answers a request (method, path, body) with a status and a JSON body.
pub type Handler = dyn Fn(&str, &str, &str) -> (u16, String) + Send + 'static;

impl FakeRegistry {
    /// Answers every request with `status` and `{"status":"registered"}`.
    pub fn start(status: u16) -> FakeRegistry {
        FakeRegistry::answering(Box::new(move |_, _, _| {
            (status, r#"{"status":"registered"}"#.to_string())
        }))
    }

    pub fn answering(handler: Box<Handler>) -> FakeRegistry {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let b = bodies.clone();
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                use std::io::BufRead;
                reader.read_line(&mut line).unwrap_or(0);
                let mut words = line.split_whitespace();
                let method = words.next().unwrap_or("").to_string();
                let path = words.next().unwrap_or("").to_string();
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; len];
                reader.read_exact(&mut body).unwrap_or(());
                let body = String::from_utf8_lossy(&body).into_owned();
                let (status, answer) = handler(&method, &path, &body);
                b.lock().unwrap().push((path, body));
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        FakeRegistry { port, bodies }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// `deployer logs NAME` shows the start line, `--since` a future time shows
/// nothing, and `logs -f` prints the line a restart writes: for any method.
/// `global` are flags before the command (`--config FILE`).
pub fn logs_show_and_follow(sb: &Sandbox, name: &str, global: &[&str]) {
    let args = |rest: &[&str]| -> Vec<String> {
        global.iter().chain(rest).map(|s| s.to_string()).collect()
    };
    let run = |rest: &[&str]| {
        let a = args(rest);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        sb.run(&a)
    };
    let logs = run(&["logs", name, "-n", "5"]);
    logs.assert_code(0);
    assert!(logs.stdout.contains("listening on port"), "{}", logs.stdout);
    let recent = run(&["logs", name, "--since", "1h"]);
    assert!(
        recent.stdout.contains("listening on port"),
        "{}",
        recent.stdout
    );
    let future = run(&["logs", name, "--since", "2099-01-01"]);
    future.assert_code(0);
    assert!(!future.stdout.contains("listening"), "{}", future.stdout);

    let mut follow = sb
        .cmd()
        .args(args(&["logs", name, "-f", "-n", "5"]))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    // The last lines first (a journal may end with systemd's own line).
    eventually(30, "the start line among the last lines", || {
        rx.recv_timeout(Duration::from_secs(1))
            .ok()
            .filter(|l| l.contains("listening on port"))
    });
    while rx.recv_timeout(Duration::from_millis(500)).is_ok() {}
    // A restart writes the start line again: the follower prints it.
    run(&["restart", name]).assert_code(0);
    let next = eventually(30, "the new line, followed", || {
        rx.recv_timeout(Duration::from_secs(1))
            .ok()
            .filter(|l| l.contains("listening on port"))
    });
    assert!(next.contains("listening on port"), "{next}");
    let _ = follow.kill();
    let _ = follow.wait();
}
