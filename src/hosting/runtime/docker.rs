//! The docker runtime. Each release becomes an image `NAME:RELEASE` (also
//! tagged `NAME:latest`), built on the target from the release directory,
//! and runs as container `NAME-RELEASE` with the port published, the
//! environment, an optional network and a restart policy. Images of kept
//! releases stay, so a rollback runs the old image again.
//!
//! The functions named `*_cmd` only build [`Cmd`] values; one transport runs
//! them. Secret values go to the container through the docker CLI's own
//! environment (`-e NAME` with no value), never through its arguments.

use super::{Fut, ReleaseCtx, RuntimeError};
use crate::hosting::health::Liveness;
use crate::hosting::host::{Host, HostError};
use crate::support::cmd::Cmd;
use crate::support::secret::Secret;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LABEL_SERVICE: &str = "deployer.service";
const LABEL_RELEASE: &str = "deployer.release";
const LABEL_PORT: &str = "deployer.port";
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
const CMD_TIMEOUT: Duration = Duration::from_secs(120);

pub struct DockerRuntime {
    host: Arc<Host>,
    /// Containers stopped for a new release, removed while it starts.
    stopped: std::sync::Mutex<Vec<String>>,
    /// Liveness is asked between health polls; `docker inspect` costs tens of
    /// milliseconds, so its answer is reused for a short while.
    last_inspect: std::sync::Mutex<Option<(Instant, Liveness)>>,
}

pub fn image(ctx: &ReleaseCtx) -> String {
    format!("{}:{}", ctx.service, ctx.release)
}

pub fn container(ctx: &ReleaseCtx) -> String {
    format!("{}-{}", ctx.service, ctx.release)
}

/// The engine's version, and whether it is a swarm manager ("28.2.2 true").
pub fn info_cmd() -> Cmd {
    Cmd::new("docker").args([
        "info",
        "--format",
        "{{.ServerVersion}} {{.Swarm.ControlAvailable}}",
    ])
}

/// The image is labelled with its service only: a per-release label would
/// make every build commit a new image, where an unchanged one is a cache
/// hit (0.06 s against 0.18 s here). Its containers carry the release.
pub fn build_cmd(ctx: &ReleaseCtx) -> Cmd {
    let dir = ctx.dir();
    Cmd::new("docker")
        .args(["build", "--quiet", "--tag", &image(ctx)])
        .args(["--tag", &format!("{}:latest", ctx.service)])
        .args(["--label", &format!("{LABEL_SERVICE}={}", ctx.service)])
        .args(["--file", &dir.join(&ctx.spec.dockerfile).to_string_lossy()])
        .arg(dir.to_string_lossy())
}

pub fn run_cmd(ctx: &ReleaseCtx) -> Cmd {
    let port = ctx.spec.port;
    let cmd = Cmd::new("docker")
        .args(["run", "--detach", "--name", &container(ctx)])
        .args(["--label", &format!("{LABEL_SERVICE}={}", ctx.service)])
        .args(["--label", &format!("{LABEL_RELEASE}={}", ctx.release)])
        .args(["--label", &format!("{LABEL_PORT}={port}")])
        .args(["--restart", &ctx.spec.restart])
        // A tiny init as PID 1 forwards SIGTERM, so services that never set
        // up signal handling still stop at once instead of after the grace.
        .arg("--init")
        .args(["--publish", &format!("{port}:{}", ctx.inner_port())]);
    let limits = &ctx.spec.limits;
    let cmd = match limits.memory_bytes {
        // No swap beyond the limit, as for systemd's MemoryMax=.
        Some(b) => cmd.args(["--memory", &b.to_string(), "--memory-swap", &b.to_string()]),
        None => cmd,
    };
    let cmd = match limits.cpus {
        Some(c) => cmd.args(["--cpus", &c.to_string()]),
        None => cmd,
    };
    with_service_env(cmd, ctx).arg(image(ctx))
}

/// The service's environment, secrets and network for a `docker run`.
/// Configured values and secrets travel in the docker CLI's environment
/// (over SSH, on the command's stdin), never in its arguments.
fn with_service_env(mut cmd: Cmd, ctx: &ReleaseCtx) -> Cmd {
    for (k, v) in ctx.deployer_env() {
        cmd = cmd.args(["--env".to_string(), format!("{k}={v}")]);
    }
    for (k, v) in &ctx.spec.env {
        cmd = cmd
            .args(["--env", k.as_str()])
            .secret_env(k.clone(), Secret::new(v.clone()));
    }
    for (k, v) in &ctx.secrets {
        cmd = cmd
            .args(["--env", k.as_str()])
            .secret_env(k.clone(), v.clone());
    }
    if let Some(net) = &ctx.spec.network {
        cmd = cmd.args(["--network", net]);
    }
    cmd
}

/// A one-off container of the new image running `command` (a migration),
/// with the service's environment and secrets, removed when it ends.
pub fn one_off_cmd(ctx: &ReleaseCtx, command: &str) -> Cmd {
    with_service_env(Cmd::new("docker").args(["run", "--rm"]), ctx)
        .args(["--entrypoint", "/bin/sh"])
        .arg(image(ctx))
        .args(["-c", command])
}

pub fn tag_latest_cmd(ctx: &ReleaseCtx) -> Cmd {
    Cmd::new("docker").args(["tag", &image(ctx), &format!("{}:latest", ctx.service)])
}

pub fn stop_cmd(ctx: &ReleaseCtx) -> Cmd {
    Cmd::new("docker").args([
        "stop",
        "--time",
        &ctx.spec.stop_grace_secs.to_string(),
        &container(ctx),
    ])
}

pub fn remove_container_cmd(ctx: &ReleaseCtx) -> Cmd {
    Cmd::new("docker").args(["rm", "--force", &container(ctx)])
}

pub fn remove_image_cmd(ctx: &ReleaseCtx) -> Cmd {
    Cmd::new("docker").args(["rmi", &image(ctx)])
}

pub fn inspect_cmd(ctx: &ReleaseCtx) -> Cmd {
    Cmd::new("docker").args([
        "inspect",
        "--format",
        "{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}",
        &container(ctx),
    ])
}

pub fn logs_cmd(ctx: &ReleaseCtx) -> Cmd {
    Cmd::new("docker").args(["logs", "--tail", "5", &container(ctx)])
}

/// A release's last `lines` log lines (from `since` on), each with its time.
pub fn log_cmd(
    ctx: &ReleaseCtx,
    lines: usize,
    since: Option<chrono::DateTime<chrono::Utc>>,
) -> Cmd {
    let mut cmd = Cmd::new("docker").args(["logs", "--timestamps", "--tail", &lines.to_string()]);
    if let Some(t) = since {
        cmd = cmd.args(["--since", &t.to_rfc3339()]);
    }
    cmd.arg(container(ctx))
}

pub fn running_cmd(service: &str) -> Cmd {
    Cmd::new("docker").args([
        "ps",
        "--filter",
        &format!("label={LABEL_SERVICE}={service}"),
        "--format",
        &format!("{{{{.Label \"{LABEL_RELEASE}\"}}}} {{{{.Label \"{LABEL_PORT}\"}}}}"),
    ])
}

pub fn network_inspect_cmd(net: &str) -> Cmd {
    Cmd::new("docker").args(["network", "inspect", "--format", "{{.Name}}", net])
}

pub fn network_create_cmd(net: &str) -> Cmd {
    Cmd::new("docker").args(["network", "create", net])
}

impl DockerRuntime {
    pub fn new(host: Arc<Host>) -> Self {
        DockerRuntime {
            host,
            stopped: Default::default(),
            last_inspect: std::sync::Mutex::new(None),
        }
    }

    /// Whether a Docker engine answers: its version, and whether it is a
    /// swarm manager.
    pub async fn engine_version(&self) -> Result<String, RuntimeError> {
        self.host
            .run_ok(&info_cmd(), Duration::from_secs(10))
            .await
            .map(|o| o.stdout.trim().to_string())
            .map_err(|e| RuntimeError::Unavailable(e.to_string()))
    }

    pub async fn build(&self, ctx: &ReleaseCtx) -> Result<String, RuntimeError> {
        self.host.run_ok(&build_cmd(ctx), BUILD_TIMEOUT).await?;
        Ok(format!("Docker image built: {}", image(ctx)))
    }

    pub async fn remove_image(&self, ctx: &ReleaseCtx) {
        let out = self.host.run(&remove_image_cmd(ctx), CMD_TIMEOUT).await;
        if out.is_ok_and(|o| o.stderr.contains("is using its referenced image")) {
            // A stopped container of the release keeps its image.
            let _ = self.host.run(&remove_container_cmd(ctx), CMD_TIMEOUT).await;
            let _ = self.host.run(&remove_image_cmd(ctx), CMD_TIMEOUT).await;
        }
    }

    pub async fn start(&self, ctx: &ReleaseCtx) -> Result<String, RuntimeError> {
        if let Some(net) = &ctx.spec.network
            && !self
                .host
                .run(&network_inspect_cmd(net), CMD_TIMEOUT)
                .await?
                .success()
        {
            self.host
                .run_ok(&network_create_cmd(net), CMD_TIMEOUT)
                .await?;
        }
        *self.last_inspect.lock().unwrap() = None;
        // `latest` follows the running release (a rollback's too); tagged
        // while the container starts.
        let (run_it, tag_it) = (run_cmd(ctx), tag_latest_cmd(ctx));
        // This release's own container, if it is among them, is left to
        // the `run` below (a name in use is removed and run again).
        let mut stopped = std::mem::take(&mut *self.stopped.lock().unwrap());
        stopped.retain(|n| *n != container(ctx));
        let remove = async {
            for name in &stopped {
                let rm = Cmd::new("docker").args(["rm", "--force", name]);
                let _ = self.host.run(&rm, CMD_TIMEOUT).await;
            }
        };
        let (run, tag, ()) = tokio::join!(
            self.host.run(&run_it, CMD_TIMEOUT),
            self.host.run_ok(&tag_it, CMD_TIMEOUT),
            remove
        );
        let run = run?;
        if !run.success() {
            if !run.stderr.contains("is already in use") {
                return Err(RuntimeError::Host(HostError::CommandFailed {
                    command: run_cmd(ctx).display(),
                    output: run.tail(8),
                }));
            }
            // A container left from an earlier run of the same release.
            let _ = self.host.run(&remove_container_cmd(ctx), CMD_TIMEOUT).await;
            self.host.run_ok(&run_cmd(ctx), CMD_TIMEOUT).await?;
        }
        tag?;
        Ok(format!("Docker container {} started", container(ctx)))
    }

    /// Stops the container gracefully; it is removed while the next one
    /// starts (or by `stop`, or before its image is removed).
    pub async fn stop_for_new(&self, ctx: &ReleaseCtx) -> Result<(), RuntimeError> {
        let grace = Duration::from_secs(ctx.spec.stop_grace_secs) + CMD_TIMEOUT;
        let out = self.host.run(&stop_cmd(ctx), grace).await?;
        if out.success() {
            self.stopped.lock().unwrap().push(container(ctx));
            Ok(())
        } else {
            self.stop(ctx).await
        }
    }

    pub async fn stop(&self, ctx: &ReleaseCtx) -> Result<(), RuntimeError> {
        let grace = Duration::from_secs(ctx.spec.stop_grace_secs) + CMD_TIMEOUT;
        let _ = self.host.run(&stop_cmd(ctx), grace).await;
        let out = self
            .host
            .run(&remove_container_cmd(ctx), CMD_TIMEOUT)
            .await?;
        if out.success() || out.stderr.contains("No such container") {
            Ok(())
        } else {
            Err(RuntimeError::Host(HostError::Failed {
                doing: format!("removing container {}", container(ctx)),
                output: out.tail(3),
            }))
        }
    }

    pub async fn liveness(&self, ctx: &ReleaseCtx) -> Liveness {
        if let Some((at, l)) = self.last_inspect.lock().unwrap().clone()
            && at.elapsed() < Duration::from_millis(250)
        {
            return l;
        }
        let l = self.inspect(ctx).await;
        *self.last_inspect.lock().unwrap() = Some((Instant::now(), l.clone()));
        l
    }

    async fn inspect(&self, ctx: &ReleaseCtx) -> Liveness {
        let out = match self.host.run(&inspect_cmd(ctx), CMD_TIMEOUT).await {
            Ok(o) if o.success() => o,
            Ok(o) => {
                return Liveness::Exited {
                    how: format!("container is gone ({})", o.tail(1)),
                    log_tail: String::new(),
                };
            }
            Err(_) => return Liveness::Alive,
        };
        let mut parts = out.stdout.split_whitespace();
        let status = parts.next().unwrap_or("");
        let code = parts.next().unwrap_or("?");
        let restarts: u32 = parts.next().and_then(|r| r.parse().ok()).unwrap_or(0);
        if status == "running" && restarts == 0 {
            return Liveness::Alive;
        }
        let logs = self
            .host
            .run(&logs_cmd(ctx), CMD_TIMEOUT)
            .await
            .map(|o| crate::support::cmd::tail_lines(&format!("{}{}", o.stdout, o.stderr), 5))
            .unwrap_or_default();
        Liveness::Exited {
            how: format!("container exited with code {code} ({status}, {restarts} restarts)"),
            log_tail: logs,
        }
    }

    /// Whether the release's container runs and publishes its port, and
    /// nothing but Docker's own proxy listens there.
    pub async fn serves(
        &self,
        ctx: &ReleaseCtx,
        listeners: &[super::ports::Listener],
    ) -> Result<(), super::PortError> {
        let format = "{{.State.Running}}|{{.HostConfig.NetworkMode}}|{{.Id}}|\
                      {{range $p, $c := .NetworkSettings.Ports}}{{range $c}}{{.HostPort}} {{end}}{{end}}";
        let cmd = Cmd::new("docker").args(["inspect", "--format", format, &container(ctx)]);
        let out = self.host.run(&cmd, CMD_TIMEOUT).await?;
        let text = out.stdout.trim();
        let mut fields = text.splitn(4, '|');
        let (running, mode, id, ports) = (
            fields.next().unwrap_or("false"),
            fields.next().unwrap_or(""),
            fields.next().unwrap_or(""),
            fields.next().unwrap_or(""),
        );
        let port = ctx.spec.port.to_string();
        let problem = |problem: String| super::PortError::Container {
            container: container(ctx),
            release: ctx.release.clone(),
            problem,
        };
        if running != "true" {
            return Err(problem("is not running".into()));
        }
        // In the host's network the service itself listens, in the
        // container's cgroup; else Docker publishes the port.
        let in_container = |l: &super::ports::Listener| !id.is_empty() && l.cgroup.contains(id);
        if mode == "host" {
            return match listeners.iter().any(in_container) {
                true => Ok(()),
                false => Err(super::not_ours(ctx, listeners)),
            };
        }
        if !ports.split_whitespace().any(|p| p == port) {
            return Err(problem(format!("does not publish port {port}")));
        }
        // Docker's own forwarders (docker-proxy, rootless Docker's) may
        // hold the port; any other process is not the release.
        let docker_owned = |l: &super::ports::Listener| {
            l.is_unknown()
                || in_container(l)
                || [
                    "docker-proxy",
                    "rootlesskit",
                    "vpnkit",
                    "slirp4netns",
                    "pasta",
                ]
                .iter()
                .any(|d| l.command.contains(d))
        };
        let others: Vec<_> = listeners
            .iter()
            .filter(|l| !docker_owned(l))
            .cloned()
            .collect();
        match others.is_empty() {
            true => Ok(()),
            false => Err(super::not_ours(ctx, &others)),
        }
    }

    pub async fn running(&self, service: &str) -> Vec<(String, u16)> {
        let Ok(out) = self.host.run(&running_cmd(service), CMD_TIMEOUT).await else {
            return Vec::new();
        };
        out.stdout
            .lines()
            .filter_map(|l| {
                let (rel, port) = l.split_once(' ')?;
                Some((rel.to_string(), port.trim().parse().ok()?))
            })
            .collect()
    }
}

impl super::Runtime for DockerRuntime {
    fn kind(&self) -> crate::model::RuntimeKind {
        crate::model::RuntimeKind::Docker
    }

    fn build<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, Result<Option<String>, RuntimeError>> {
        Box::pin(async move { DockerRuntime::build(self, ctx).await.map(Some) })
    }

    fn remove_build<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, ()> {
        Box::pin(self.remove_image(ctx))
    }

    fn start<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, Result<String, RuntimeError>> {
        Box::pin(DockerRuntime::start(self, ctx))
    }

    fn stop<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, Result<(), RuntimeError>> {
        Box::pin(DockerRuntime::stop(self, ctx))
    }

    fn stop_for_new<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, Result<(), RuntimeError>> {
        Box::pin(DockerRuntime::stop_for_new(self, ctx))
    }

    fn stop_shell(&self, ctx: &ReleaseCtx) -> String {
        format!(
            "{} >/dev/null 2>&1; {} >/dev/null 2>&1",
            stop_cmd(ctx).display(),
            remove_container_cmd(ctx).display()
        )
    }

    fn liveness<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, Liveness> {
        Box::pin(DockerRuntime::liveness(self, ctx))
    }

    fn owns<'a>(
        &'a self,
        ctx: &'a ReleaseCtx,
        listeners: &'a [super::ports::Listener],
    ) -> Fut<'a, Result<(), super::PortError>> {
        Box::pin(self.serves(ctx, listeners))
    }

    fn log_cmd(
        &self,
        ctx: &ReleaseCtx,
        lines: usize,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Option<Cmd> {
        Some(log_cmd(ctx, lines, since))
    }

    fn running<'a>(
        &'a self,
        _: &'a crate::hosting::release::ServiceDirs,
        service: &'a str,
    ) -> Fut<'a, Vec<(String, u16)>> {
        Box::pin(DockerRuntime::running(self, service))
    }

    fn describe_build(&self, ctx: &ReleaseCtx) -> String {
        build_cmd(ctx).display()
    }

    fn describe_start(&self, ctx: &ReleaseCtx) -> String {
        run_cmd(ctx).display()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hosting::release::ServiceDirs;
    use crate::model::{RunSpec, RuntimeKind};
    use crate::support::secret::Secret;

    fn ctx() -> ReleaseCtx {
        ReleaseCtx {
            service: "hello".into(),
            release: "20261125-120000000-abcdef12".into(),
            dirs: ServiceDirs::new(std::path::Path::new("/srv/deployer"), "hello"),
            spec: RunSpec {
                env: [("GREETING".to_string(), "hi there".to_string())].into(),
                network: Some("fpai-network".into()),
                ..RunSpec::example(RuntimeKind::Docker)
            },
            secrets: vec![("API_KEY".into(), Secret::new("sk-very-secret"))],
        }
    }

    #[test]
    fn run_command_is_exact_and_keeps_secrets_out_of_argv() {
        let cmd = run_cmd(&ctx());
        assert_eq!(
            cmd.display(),
            "docker run --detach --name hello-20261125-120000000-abcdef12 \
             --label deployer.service=hello --label deployer.release=20261125-120000000-abcdef12 \
             --label deployer.port=8090 --restart unless-stopped --init --publish 8090:8090 \
             --env PORT=8090 --env SERVICE_NAME=hello --env RELEASE=20261125-120000000-abcdef12 \
             --env GREETING --env API_KEY --network fpai-network \
             hello:20261125-120000000-abcdef12"
        );
        assert!(!format!("{:?}", cmd.args).contains("sk-very-secret"));
        assert!(!format!("{:?}", cmd.args).contains("hi there"));
        assert_eq!(
            cmd.env.len(),
            2,
            "the configured value and the secret travel in the CLI's environment"
        );
    }

    #[test]
    fn build_command_tags_release_and_latest() {
        assert_eq!(
            build_cmd(&ctx()).display(),
            "docker build --quiet --tag hello:20261125-120000000-abcdef12 --tag hello:latest \
             --label deployer.service=hello \
             --file /srv/deployer/services/hello/releases/20261125-120000000-abcdef12/Dockerfile \
             /srv/deployer/services/hello/releases/20261125-120000000-abcdef12"
        );
    }
}
