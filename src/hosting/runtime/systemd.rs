//! The systemd runtime: each release runs as its own unit,
//! `deployer-NAME-RELEASE.service`, with WorkingDirectory in the release, an
//! EnvironmentFile of mode 0600 (environment and secrets), Restart=on-failure
//! and an optional User. One unit per release makes a rollback exact: the
//! previous release's unit, unchanged, is started again.
//!
//! A Python service's release links its venv as `.venv` (made in Build, see
//! `python.rs`); the unit's PATH has it first.
//!
//! Like the docker runtime, it only builds commands; the host runs them.

use super::{Fut, ReleaseCtx, RuntimeError};
use crate::hosting::health::Liveness;
use crate::hosting::host::Host;
use crate::hosting::release::ServiceDirs;
use crate::support::cmd::{Cmd, quote};
use std::sync::Arc;
use std::time::Duration;

const CMD_TIMEOUT: Duration = Duration::from_secs(120);
const UNIT_DIR: &str = "/etc/systemd/system";

pub struct SystemdRuntime {
    host: Arc<Host>,
    /// The units (and a hash of their files) this runtime wrote and
    /// reloaded: a site lives for one command or job.
    written: std::sync::Mutex<std::collections::HashSet<(String, blake3::Hash)>>,
}

/// The unit of one release.
pub fn unit_name(ctx: &ReleaseCtx) -> String {
    format!("deployer-{}-{}.service", ctx.service, ctx.release)
}

/// A release's last `lines` journal lines (from `since` on), each with
/// its time.
pub fn journal_cmd(
    ctx: &ReleaseCtx,
    lines: usize,
    since: Option<chrono::DateTime<chrono::Utc>>,
) -> Cmd {
    let mut cmd = Cmd::new("journalctl").args(["-u", &unit_name(ctx)]).args([
        "-n",
        &lines.to_string(),
        "--no-pager",
        "-o",
        "short-iso",
    ]);
    if let Some(t) = since {
        let at = t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
        cmd = cmd.args(["--since", &at]);
    }
    cmd
}

fn env_file(ctx: &ReleaseCtx) -> String {
    ctx.dirs
        .root
        .join("env")
        .join(format!("{}.env", ctx.release))
        .to_string_lossy()
        .into_owned()
}

/// systemd's quoting for a value in an EnvironmentFile line.
fn env_line(k: &str, v: &str) -> String {
    let escaped = v
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("{k}=\"{escaped}\"\n")
}

/// The unit file for a release.
pub fn unit_file(ctx: &ReleaseCtx) -> String {
    let dir = ctx.dir().to_string_lossy().into_owned();
    let start = ctx.spec.start.as_deref().unwrap_or("false");
    let mut unit = format!(
        "# Written by deployer: release {rel} of {svc}. Do not edit; deploy instead.\n\
         [Unit]\n\
         Description={svc} release {rel} (deployer)\n\
         After=network-online.target\n\n\
         [Service]\n\
         Type=simple\n\
         WorkingDirectory={dir}\n\
         EnvironmentFile={env}\n\
         ExecStart=/bin/sh -c {start}\n\
         Restart=on-failure\n\
         RestartSec=1\n\
         KillMode=control-group\n\
         TimeoutStopSec={grace}\n",
        rel = ctx.release,
        svc = ctx.service,
        dir = unit_value(&dir),
        env = unit_value(&env_file(ctx)),
        start = systemd_quote(&format!("exec {start}")),
        grace = ctx.spec.stop_grace_secs,
    );
    if let Some(user) = &ctx.spec.user {
        unit.push_str(&format!("User={}\n", unit_value(user)));
    }
    if let Some(bytes) = ctx.spec.limits.memory_bytes {
        unit.push_str(&format!("MemoryMax={bytes}\nMemorySwapMax=0\n"));
    }
    if let Some(quota) = ctx.spec.limits.cpu_quota() {
        unit.push_str(&format!("CPUQuota={quota}\n"));
    }
    unit.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    unit
}

/// Quotes one argument for a systemd command line: double quotes; `$` and
/// `%` doubled so systemd expands neither variables nor specifiers (the
/// shell sees them as written); newlines and other control characters as
/// C escapes, so no value can end the line and add a directive.
fn systemd_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '$' => out.push_str("$$"),
            '%' => out.push_str("%%"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A plain unit-file value (a path, a user): `%` doubled, and nothing that
/// could end the line.
fn unit_value(s: &str) -> String {
    s.replace('%', "%%")
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

/// The environment file's contents: PATH (a Python service's with its
/// venv first), deployer's variables, the configured ones, then the
/// secrets.
pub fn env_contents(ctx: &ReleaseCtx) -> String {
    let mut out = String::new();
    if ctx.venv().is_none() {
        out.push_str(&env_line("PATH", super::DEFAULT_PATH));
    }
    for (k, v) in ctx.base_env() {
        out.push_str(&env_line(&k, &v));
    }
    for (k, v) in &ctx.secrets {
        out.push_str(&env_line(k, v.expose()));
    }
    out
}

pub fn systemctl(args: &[&str]) -> Cmd {
    Cmd::new("systemctl").args(args.iter().copied())
}

impl SystemdRuntime {
    pub fn new(host: Arc<Host>) -> Self {
        SystemdRuntime {
            host,
            written: Default::default(),
        }
    }

    /// Whether systemd runs as the host's init.
    pub async fn available(&self) -> Result<(), RuntimeError> {
        let out = self
            .host
            .run(&systemctl(&["is-system-running"]), Duration::from_secs(20))
            .await?;
        match out.stdout.trim() {
            "running" | "degraded" | "starting" => Ok(()),
            other => Err(RuntimeError::Unavailable(format!(
                "systemd is not running on {} (is-system-running: {})",
                self.host.name(),
                if other.is_empty() {
                    out.tail(1)
                } else {
                    other.to_string()
                }
            ))),
        }
    }

    /// Build: the unit and environment file (a Python service's venv was
    /// made by the step before).
    pub async fn build(&self, ctx: &ReleaseCtx) -> Result<String, RuntimeError> {
        self.write_unit(ctx).await?;
        Ok(format!("unit {} written", unit_name(ctx)))
    }

    /// Writes the unit and its environment file, then reloads systemd:
    /// one command on a server. Remembers what it wrote, so that starting the release just
    /// built does not write and reload again.
    async fn write_unit(&self, ctx: &ReleaseCtx) -> Result<(), RuntimeError> {
        let (unit, env) = (unit_file(ctx), env_contents(ctx));
        let written = (
            unit_name(ctx),
            blake3::hash(format!("{unit}\0{env}").as_bytes()),
        );
        if self.written.lock().unwrap().contains(&written) {
            return Ok(());
        }
        let (unit_path, env_path) = (format!("{UNIT_DIR}/{}", written.0), env_file(ctx));
        let files = [
            (unit_path.as_str(), unit.as_bytes(), 0o644),
            (env_path.as_str(), env.as_bytes(), 0o600),
        ];
        self.host
            .write_files(&files, Some("systemctl daemon-reload"))
            .await?;
        self.written.lock().unwrap().insert(written);
        Ok(())
    }

    /// One command: the unit stopped and disabled, its files removed,
    /// systemd reloaded once.
    pub async fn remove_build(&self, ctx: &ReleaseCtx) {
        let unit = unit_name(ctx);
        self.written.lock().unwrap().retain(|(u, _)| *u != unit);
        let q = crate::support::cmd::quote;
        let script = format!(
            "systemctl disable --now --no-reload {}; rm -f {} {}; systemctl daemon-reload",
            q(&unit),
            q(&format!("{UNIT_DIR}/{unit}")),
            q(&env_file(ctx))
        );
        let _ = self
            .host
            .run(&Cmd::new("sh").args(["-c", &script]), CMD_TIMEOUT)
            .await;
    }

    pub async fn start(&self, ctx: &ReleaseCtx) -> Result<String, RuntimeError> {
        // The env file holds secrets, so it is written again from this run's
        // values (a rollback re-reads them), never kept from an old deploy.
        // (Unless this runtime wrote these very files for this release.)
        self.write_unit(ctx).await?;
        let unit = unit_name(ctx);
        // One command: a unit that failed before starts afresh.
        let q = crate::support::cmd::quote(&unit);
        let script = format!("systemctl reset-failed {q} 2>/dev/null; systemctl enable --now {q}");
        self.host
            .run_ok(&Cmd::new("sh").args(["-c", &script]), CMD_TIMEOUT)
            .await?;
        Ok(format!("systemd unit {unit} enabled and started"))
    }

    pub async fn stop(&self, ctx: &ReleaseCtx) -> Result<(), RuntimeError> {
        let unit = unit_name(ctx);
        let timeout = Duration::from_secs(ctx.spec.stop_grace_secs) + CMD_TIMEOUT;
        self.host
            .run_ok(&systemctl(&["disable", "--now", &unit]), timeout)
            .await?;
        Ok(())
    }

    pub async fn liveness(&self, ctx: &ReleaseCtx) -> Liveness {
        let unit = unit_name(ctx);
        let show = systemctl(&[
            "show",
            "-p",
            "ActiveState,SubState,NRestarts,ExecMainStatus",
            &unit,
        ]);
        let Ok(out) = self.host.run(&show, CMD_TIMEOUT).await else {
            return Liveness::Alive;
        };
        let field = |k: &str| {
            out.stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or("")
                .to_string()
        };
        let restarts: u32 = field("NRestarts").parse().unwrap_or(0);
        let state = field("ActiveState");
        if restarts == 0 && matches!(state.as_str(), "active" | "activating") {
            return Liveness::Alive;
        }
        let logs = self
            .host
            .run(
                &Cmd::new("journalctl").args(["-u", &unit, "-n", "5", "--no-pager", "-o", "cat"]),
                CMD_TIMEOUT,
            )
            .await
            .map(|o| crate::support::cmd::tail_lines(&o.stdout, 5))
            .unwrap_or_default();
        Liveness::Exited {
            how: format!(
                "unit {unit} exited with status {} ({state}/{}, {restarts} restarts)",
                field("ExecMainStatus"),
                field("SubState")
            ),
            log_tail: logs,
        }
    }

    /// Releases of a service whose unit is active, with their ports (read
    /// from each release's environment file).
    pub async fn running(&self, dirs: &ServiceDirs, service: &str) -> Vec<(String, u16)> {
        let pattern = format!("deployer-{service}-*.service");
        let Ok(out) = self
            .host
            .run(
                &systemctl(&[
                    "list-units",
                    "--plain",
                    "--no-legend",
                    "--state=active",
                    &pattern,
                ]),
                CMD_TIMEOUT,
            )
            .await
        else {
            return Vec::new();
        };
        let prefix = format!("deployer-{service}-");
        let releases: Vec<String> = out
            .stdout
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|u| u.strip_prefix(&prefix)?.strip_suffix(".service"))
            // `deployer-api-*` also matches `api-v2`'s units: only a release
            // id may follow the prefix.
            .filter(|r| crate::hosting::release::is_release_id(r))
            .map(str::to_string)
            .collect();
        if releases.is_empty() {
            return Vec::new();
        }
        let env_dir = dirs.root.join("env");
        let script = format!(
            "cd {} && grep -H '^PORT=' *.env 2>/dev/null || true",
            quote(&env_dir.to_string_lossy())
        );
        let ports = self
            .host
            .run(&Cmd::new("sh").args(["-c", &script]), CMD_TIMEOUT)
            .await
            .map(|o| o.stdout)
            .unwrap_or_default();
        releases
            .into_iter()
            .map(|r| {
                let port = ports
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{r}.env:PORT=")))
                    .and_then(|p| p.trim_matches('"').parse().ok())
                    .unwrap_or(0);
                (r, port)
            })
            .collect()
    }
}

impl super::Runtime for SystemdRuntime {
    fn kind(&self) -> crate::model::RuntimeKind {
        crate::model::RuntimeKind::Systemd
    }

    fn build<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, Result<Option<String>, RuntimeError>> {
        Box::pin(async move { SystemdRuntime::build(self, ctx).await.map(Some) })
    }

    fn remove_build<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, ()> {
        Box::pin(SystemdRuntime::remove_build(self, ctx))
    }

    fn start<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, Result<String, RuntimeError>> {
        Box::pin(SystemdRuntime::start(self, ctx))
    }

    fn stop<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, Result<(), RuntimeError>> {
        Box::pin(SystemdRuntime::stop(self, ctx))
    }

    fn stop_shell(&self, ctx: &ReleaseCtx) -> String {
        format!(
            "systemctl disable --now {} >/dev/null 2>&1",
            quote(&unit_name(ctx))
        )
    }

    fn liveness<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, Liveness> {
        Box::pin(SystemdRuntime::liveness(self, ctx))
    }

    /// A listener in the unit's cgroup.
    fn owns<'a>(
        &'a self,
        ctx: &'a ReleaseCtx,
        listeners: &'a [super::ports::Listener],
    ) -> Fut<'a, Result<(), super::PortError>> {
        Box::pin(async move {
            let unit = format!("/{}", unit_name(ctx));
            match listeners.iter().any(|l| l.cgroup.ends_with(&unit)) {
                true => Ok(()),
                false => Err(super::not_ours(ctx, listeners)),
            }
        })
    }

    fn log_cmd(
        &self,
        ctx: &ReleaseCtx,
        lines: usize,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Option<Cmd> {
        Some(journal_cmd(ctx, lines, since))
    }

    fn running<'a>(
        &'a self,
        dirs: &'a ServiceDirs,
        service: &'a str,
    ) -> Fut<'a, Vec<(String, u16)>> {
        Box::pin(SystemdRuntime::running(self, dirs, service))
    }

    fn describe_build(&self, ctx: &ReleaseCtx) -> String {
        format!("a venv if requirements.txt, then unit {}", unit_name(ctx))
    }

    fn describe_start(&self, ctx: &ReleaseCtx) -> String {
        format!("systemctl enable --now {}", unit_name(ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RunSpec, RuntimeKind};
    use crate::support::secret::Secret;

    fn ctx() -> ReleaseCtx {
        ReleaseCtx {
            service: "api".into(),
            release: "20261125-120000000-abcdef12".into(),
            dirs: ServiceDirs {
                root: "/srv/deployer/api".into(),
            },
            spec: RunSpec {
                port: 8010,
                start: Some("python app.py --greeting \"hi $USER\"".into()),
                env: [("MODE".to_string(), "blue \"sky\"".to_string())].into(),
                user: Some("svc".into()),
                ..RunSpec::example(RuntimeKind::Systemd)
            },
            secrets: vec![("API_KEY".into(), Secret::new("sk-1"))],
        }
    }

    #[test]
    fn unit_file_runs_the_release_with_its_env_file() {
        let unit = unit_file(&ctx());
        assert!(
            unit.contains(
                "WorkingDirectory=/srv/deployer/api/releases/20261125-120000000-abcdef12\n"
            )
        );
        assert!(
            unit.contains(
                "EnvironmentFile=/srv/deployer/api/env/20261125-120000000-abcdef12.env\n"
            )
        );
        assert!(
            unit.contains(r#"ExecStart=/bin/sh -c "exec python app.py --greeting \"hi $$USER\"""#),
            "{unit}"
        );
        assert!(unit.contains("Restart=on-failure\n"));
        assert!(unit.contains("User=svc\n"));
        assert!(!unit.contains("sk-1"), "secrets live in the env file only");
    }

    #[test]
    fn no_value_can_add_a_directive_or_a_specifier_to_the_unit() {
        let mut c = ctx();
        c.spec.start = Some("./app\nExecStartPre=+/bin/touch /root/pwned # 100%n".into());
        c.spec.user = Some("svc\nExecStartPre=+/bin/true %h".into());
        let unit = unit_file(&c);
        let directives: Vec<&str> = unit
            .lines()
            .filter(|l| l.starts_with("ExecStart"))
            .collect();
        assert_eq!(directives.len(), 1, "{unit}");
        assert!(
            unit.contains(r#"ExecStart=/bin/sh -c "exec ./app\nExecStartPre=+/bin/touch /root/pwned # 100%%n""#),
            "{unit}"
        );
        assert!(
            unit.contains("User=svcExecStartPre=+/bin/true %%h\n"),
            "{unit}"
        );
        assert!(
            !unit.lines().any(|l| l.starts_with("ExecStartPre")),
            "{unit}"
        );
    }

    #[test]
    fn another_services_units_are_not_this_ones() {
        use crate::hosting::release::is_release_id;
        assert!(is_release_id("20261125-120000000-abcdef12"));
        assert!(is_release_id("20261125-120000000-abcdef12-2"));
        assert!(!is_release_id("v2-20261125-120000000-abcdef12"));
        assert!(!is_release_id("20261125-120000000-abcdef12-x"));
        assert!(!is_release_id("v2"));
    }

    #[test]
    fn env_file_has_venv_path_env_and_secrets() {
        let plain = env_contents(&ctx());
        assert!(plain.starts_with("PATH=\"/usr/local/sbin:"), "{plain}");
        let mut python = ctx();
        python.spec.python = Some(crate::model::PythonSpec {
            deps: "requirements.txt".into(),
        });
        let env = env_contents(&python);
        assert!(env.contains(
            "PATH=\"/srv/deployer/api/releases/20261125-120000000-abcdef12/.venv/bin:/usr/local/sbin:"
        ), "{env}");
        assert!(
            env.contains(
                "VIRTUAL_ENV=\"/srv/deployer/api/releases/20261125-120000000-abcdef12/.venv\"\n"
            ),
            "{env}"
        );
        assert_eq!(env.matches("PATH=").count(), 1, "{env}");
        assert!(env.contains("PORT=\"8010\"\n"));
        assert!(env.contains("MODE=\"blue \\\"sky\\\"\"\n"));
        assert!(env.contains("API_KEY=\"sk-1\"\n"));
    }
}
