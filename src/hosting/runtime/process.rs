//! The process runtime, the embedded default: a release runs as a process on
//! this machine, detached from deployer (its own session, so it outlives the
//! deployer that started it), with a pid file and a log file per release.
//! Stopping is graceful: SIGTERM to its process group, then SIGKILL after the
//! grace period. The pid file records the process start time too, so a pid
//! reused by another program is never signalled.

use super::{ReleaseCtx, RuntimeError};
use crate::hosting::health::Liveness;
use crate::hosting::release::ServiceDirs;
use crate::support::cmd::{PASSED_ENV, tail_lines};
use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct ProcessRuntime {
    /// Children started by this deployer process, so their exit is seen at
    /// once and they are reaped.
    children: Mutex<HashMap<String, Child>>,
}

/// What a pid file holds.
#[derive(Clone, Copy, Debug, PartialEq)]
struct PidRecord {
    pid: i32,
    start_time: u64,
}

/// `systemd-run` arguments that start a process in a transient scope with
/// the release's limits, where systemd runs; `None` when there are no
/// limits or no systemd (then they are not enforced, and Start Service
/// says so).
fn limits_scope(limits: &crate::model::Limits) -> Option<Vec<String>> {
    if limits.is_none() || !std::path::Path::new("/run/systemd/system").is_dir() {
        return None;
    }
    let mut args = vec!["--scope".to_string(), "--quiet".into(), "--collect".into()];
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        args.push("--user".into());
    }
    if let Some(b) = limits.memory_bytes {
        args.extend(["-p".into(), format!("MemoryMax={b}")]);
    }
    if let Some(q) = limits.cpu_quota() {
        args.extend(["-p".into(), format!("CPUQuota={q}")]);
    }
    Some(args)
}

impl ProcessRuntime {
    pub async fn start(&self, ctx: &ReleaseCtx) -> Result<String, RuntimeError> {
        let start = ctx
            .spec
            .start
            .as_deref()
            .ok_or_else(|| RuntimeError::Release("no start command".into()))?;
        let log_path = ctx.dirs.log_file(&ctx.release);
        let pid_path = ctx.dirs.pid_file(&ctx.release);
        for p in [&log_path, &pid_path] {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(RuntimeError::io(format!("creating {}", dir.display())))?;
            }
        }
        let (log, log_err) = log_output(&log_path).map_err(RuntimeError::io(format!(
            "opening log {}",
            log_path.display()
        )))?;
        let scope = limits_scope(&ctx.spec.limits);
        let mut cmd = service_command(ctx, start, scope.as_deref(), log, log_err);
        let mut child = cmd.spawn().map_err(RuntimeError::io(format!(
            "starting `{start}` in {}",
            ctx.dir().display()
        )))?;
        let pid = child.id() as i32;
        let record = PidRecord {
            pid,
            start_time: proc_start_time(pid).unwrap_or(0),
        };
        // The child waits on its stdin until its pid file is on disk: a
        // deployer killed before that closes the pipe and the child exits,
        // so no process of a release runs without its record.
        let gate = child.stdin.take();
        if let Err(e) = write_pid_file(&pid_path, record) {
            drop(gate);
            let _ = child.wait();
            return Err(RuntimeError::io(format!("writing {}", pid_path.display()))(
                e,
            ));
        }
        if let Some(mut gate) = gate {
            use std::io::Write;
            let _ = gate.write_all(b"go\n");
        }
        self.children
            .lock()
            .unwrap()
            .insert(ctx.release.clone(), child);
        let limits = match (ctx.spec.limits.is_none(), &scope) {
            (true, _) => "",
            (false, Some(_)) => ", limits in a systemd scope",
            (false, None) => ", [limits] not enforced (no systemd on this machine)",
        };
        Ok(format!(
            "process started (pid {pid}), log {}{limits}",
            log_path.display()
        ))
    }

    pub async fn liveness(&self, ctx: &ReleaseCtx) -> Liveness {
        let exited = {
            let mut children = self.children.lock().unwrap();
            match children.get_mut(&ctx.release).map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => Some(match status.code() {
                    Some(code) => format!("exited with code {code}"),
                    None => "was killed by a signal".to_string(),
                }),
                Some(_) => None,
                None => {
                    (!self.is_alive(&ctx.dirs, &ctx.release)).then(|| "is not running".to_string())
                }
            }
        };
        match exited {
            None => Liveness::Alive,
            Some(how) => {
                let path = ctx.dirs.log_file(&ctx.release);
                settle(&path).await;
                let log = std::fs::read_to_string(&path).unwrap_or_default();
                Liveness::Exited {
                    how,
                    log_tail: tail_lines(&log, 5),
                }
            }
        }
    }

    pub async fn stop(&self, ctx: &ReleaseCtx) -> Result<(), RuntimeError> {
        let pid_path = ctx.dirs.pid_file(&ctx.release);
        let child = self.children.lock().unwrap().remove(&ctx.release);
        let Some(record) = read_pid_file(&pid_path) else {
            return Ok(());
        };
        let mut child = child;
        // A leader gone with workers left in its group: they are stopped
        // too (they may hold the port).
        if is_running(record) || group_alive(record.pid) {
            // Until the whole group has gone: a worker that outlives its
            // leader may still hold the port.
            let mut alive = || {
                if let Some(c) = child.as_mut() {
                    let _ = c.try_wait();
                }
                is_running(record) || group_alive(record.pid)
            };
            let grace = Duration::from_secs(ctx.spec.stop_grace_secs);
            signal_group(record.pid, libc::SIGTERM);
            let deadline = Instant::now() + grace;
            while alive() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if alive() {
                signal_group(record.pid, libc::SIGKILL);
                let deadline = Instant::now() + Duration::from_secs(5);
                while alive() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            if is_running(record) {
                return Err(RuntimeError::Release(format!(
                    "process {} did not stop after SIGKILL",
                    record.pid
                )));
            }
        }
        if let Some(mut c) = child {
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&pid_path);
        Ok(())
    }

    /// Whether the release's process group (or session) holds the port.
    pub fn serves(&self, ctx: &ReleaseCtx, listeners: &[super::ports::Listener]) -> bool {
        let Some(record) = read_pid_file(&ctx.dirs.pid_file(&ctx.release)) else {
            return false;
        };
        let leader = record.pid as u32;
        is_running(record)
            && listeners
                .iter()
                .any(|l| l.session == leader || l.pgrp == leader)
    }

    fn is_alive(&self, dirs: &ServiceDirs, release: &str) -> bool {
        read_pid_file(&dirs.pid_file(release)).is_some_and(is_running)
    }

    /// Releases with a live process, and the port each was started with.
    pub fn running(&self, dirs: &ServiceDirs) -> Vec<(String, u16)> {
        let Ok(entries) = std::fs::read_dir(dirs.root.join("run")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.strip_suffix(".pid")?.to_string();
                let record = read_pid_file(&e.path())?;
                if !is_running(record) {
                    return None;
                }
                let port = proc_env(record.pid, "PORT")?.parse().ok()?;
                Some((name, port))
            })
            .collect()
    }
}

/// The quick proof: the release's own process tree holds its port.
pub fn holds_port(ctx: &ReleaseCtx) -> bool {
    read_pid_file(&ctx.dirs.pid_file(&ctx.release))
        .filter(|r| is_running(*r))
        .is_some_and(|r| super::ports::held_below(r.pid as u32, ctx.spec.port))
}

fn read_pid_file(path: &std::path::Path) -> Option<PidRecord> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut parts = text.split_whitespace();
    Some(PidRecord {
        pid: parts.next()?.parse().ok()?,
        start_time: parts.next()?.parse().ok()?,
    })
}

/// Fields of /proc/PID/stat after the command name: state is the first,
/// start time the 20th.
fn proc_stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    Some(after.split_whitespace().map(str::to_string).collect())
}

fn proc_start_time(pid: i32) -> Option<u64> {
    proc_stat_fields(pid)?.get(19)?.parse().ok()
}

/// Alive, not a zombie, and the same process the pid file was written for.
fn is_running(record: PidRecord) -> bool {
    match proc_stat_fields(record.pid) {
        Some(fields) => {
            fields.first().is_some_and(|s| s != "Z" && s != "X")
                && (record.start_time == 0
                    || fields.get(19).and_then(|t| t.parse().ok()) == Some(record.start_time))
        }
        None => false,
    }
}

fn proc_env(pid: i32, key: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|b| *b == 0).find_map(|kv| {
        let kv = std::str::from_utf8(kv).ok()?;
        kv.strip_prefix(key)?.strip_prefix('=').map(str::to_string)
    })
}

/// Whether a process group still has a live (not zombie) member.
fn group_alive(pgid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks; no memory is touched.
    if unsafe { libc::kill(-pgid, 0) } != 0 {
        return false;
    }
    // Members may be zombies nobody reaps: look at each.
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|p| {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            return false;
        };
        proc_stat_fields(pid).is_some_and(|f| {
            f.first().is_some_and(|s| s != "Z" && s != "X")
                && f.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid)
        })
    })
}

fn signal_group(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a negative pid signals the process group that
    // setsid() made at start; it has no memory-safety preconditions.
    unsafe {
        if libc::kill(-pid, sig) != 0 {
            libc::kill(pid, sig);
        }
    }
}

/// Writes a pid file whole or not at all (a temporary file, synced, then
/// renamed over it), readable by its owner only.
fn write_pid_file(path: &std::path::Path, record: PidRecord) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("pid.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    writeln!(f, "{} {}", record.pid, record.start_time)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// A service's log, appended to; only its owner can read it.
/// The command that starts a release: `sh -c '…; exec START'` in the release
/// directory (in a systemd scope when `scope` is given), with a clean
/// environment, its output to `out` and `err`, in a session of its own.
fn service_command(
    ctx: &ReleaseCtx,
    start: &str,
    scope: Option<&[String]>,
    out: Stdio,
    err: Stdio,
) -> Command {
    let mut cmd = match scope {
        Some(args) => {
            let mut c = Command::new("systemd-run");
            c.args(args).arg("/bin/sh");
            c
        }
        None => Command::new("/bin/sh"),
    };
    // It reads `go` from deployer before it becomes the service (see
    // `start`), and gives the service no input.
    cmd.arg("-c")
        .arg(format!(
            "IFS= read -r go && [ \"$go\" = go ] || exit 111; exec </dev/null; exec {start}"
        ))
        .current_dir(ctx.dir())
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(err);
    for key in PASSED_ENV {
        if let Ok(v) = std::env::var(key) {
            cmd.env(key, v);
        }
    }
    cmd.envs(ctx.base_env());
    for (k, v) in &ctx.secrets {
        cmd.env(k, v.expose());
    }
    // SAFETY: setsid is async-signal-safe; it detaches the child into its
    // own session and process group, so it survives deployer and its
    // terminal, and a stop can signal the whole group.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Waits (at most half a second) for a log to stop growing: the log
/// writer may still be writing what an exited process said last.
async fn settle(path: &std::path::Path) {
    let size = || std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut last = size();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = size();
        if now == last {
            return;
        }
        last = now;
    }
}

/// Where a service's stdout and stderr go: a `deployer log-writer` that
/// rotates its log by size (DEPLOYER_LOG_MAX_BYTES, default 10 MiB), when
/// deployer runs as its own binary; else the log file itself.
fn log_output(path: &std::path::Path) -> std::io::Result<(Stdio, Stdio)> {
    let exe = std::env::current_exe()?;
    if exe.file_name().is_some_and(|n| n == "deployer") {
        let max = std::env::var("DEPLOYER_LOG_MAX_BYTES")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(crate::support::logwriter::MAX_BYTES);
        let mut writer = std::process::Command::new(exe);
        writer
            .arg("log-writer")
            .arg(path)
            .args(["--max-bytes", &max.to_string()])
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: as for the service: its own session, so it outlives
        // deployer and its terminal's signals.
        unsafe {
            use std::os::unix::process::CommandExt;
            writer.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = writer.spawn()?;
        let pipe = std::os::fd::OwnedFd::from(child.stdin.take().expect("piped stdin"));
        let err = pipe.try_clone()?;
        // Reaped when it ends (the service closed its output).
        std::thread::spawn(move || child.wait());
        return Ok((Stdio::from(pipe), Stdio::from(err)));
    }
    let log = private_log(path)?;
    let err = log.try_clone()?;
    Ok((Stdio::from(log), Stdio::from(err)))
}

fn private_log(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RunSpec, RuntimeKind};

    fn ctx(dir: &std::path::Path, start: &str) -> ReleaseCtx {
        let dirs = ServiceDirs::new(dir, "gate");
        std::fs::create_dir_all(dirs.release("r1")).unwrap();
        ReleaseCtx {
            service: "gate".into(),
            release: "r1".into(),
            dirs,
            spec: RunSpec {
                start: Some(start.into()),
                secret_names: Vec::new(),
                ..RunSpec::example(RuntimeKind::Process)
            },
            secrets: Vec::new(),
        }
    }

    /// A deployer that dies between spawning a release and writing its pid
    /// file closes the gate's pipe: the child ends without ever running
    /// the release's command, so nothing runs that no record names.
    #[test]
    fn a_release_whose_deployer_died_before_its_pid_file_never_runs() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let ctx = ctx(dir.path(), &format!("touch {}", marker.display()));
        let cmd_start = ctx.spec.start.clone().unwrap();
        let mut child = service_command(&ctx, &cmd_start, None, Stdio::null(), Stdio::null())
            .spawn()
            .unwrap();
        // The deployer "dies": its end of the pipe closes, no `go` sent.
        drop(child.stdin.take());
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(111));
        assert!(
            !marker.exists(),
            "the release's command ran without its record"
        );
    }

    #[tokio::test]
    async fn a_started_release_runs_once_its_pid_file_is_written_and_stops_with_its_group() {
        let dir = tempfile::tempdir().unwrap();
        // A leader whose worker ignores SIGTERM: stop waits for the group.
        let ctx = ctx(
            dir.path(),
            "sh -c 'trap \"\" TERM; touch worker; sleep 30' & sleep 30",
        );
        let ctx = ReleaseCtx {
            spec: RunSpec {
                stop_grace_secs: 1,
                ..ctx.spec.clone()
            },
            ..ctx
        };
        let runtime = ProcessRuntime::default();
        runtime.start(&ctx).await.unwrap();
        let record = read_pid_file(&ctx.dirs.pid_file("r1")).expect("a pid file");
        assert!(is_running(record));
        let worker = ctx.dir().join("worker");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !worker.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(worker.exists(), "the worker started");
        let stopping = Instant::now();
        runtime.stop(&ctx).await.unwrap();
        assert!(
            stopping.elapsed() >= Duration::from_secs(1),
            "the worker ignoring SIGTERM was waited for, then killed"
        );
        assert!(
            !group_alive(record.pid),
            "a worker of the release outlived stop"
        );
        assert!(read_pid_file(&ctx.dirs.pid_file("r1")).is_none());
    }
}
