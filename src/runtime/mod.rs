//! Runtimes run a release: build it, start it, tell whether it is alive, and
//! stop it. `process` runs it as a detached process on this machine;
//! `docker` builds an image on the target and runs a container; `systemd`
//! writes a unit (and a Python venv) per release on a server. Docker and
//! systemd commands are built as data (`Cmd`) and run by the host.

pub mod docker;
pub mod ports;
pub mod process;
#[cfg(test)]
pub mod scripted;
pub mod swarm;
pub mod systemd;

use crate::health::Liveness;
use crate::host::HostError;
use crate::model::{RunSpec, RuntimeKind};
use crate::release::ServiceDirs;
use crate::secret::Secret;
use std::path::PathBuf;

/// PATH for what runs on a server, after a venv.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything a runtime needs to act on one release.
#[derive(Clone, Debug)]
pub struct ReleaseCtx {
    pub service: String,
    pub release: String,
    pub dirs: ServiceDirs,
    pub spec: RunSpec,
    pub secrets: Vec<(String, Secret)>,
}

impl ReleaseCtx {
    pub fn dir(&self) -> PathBuf {
        self.dirs.release(&self.release)
    }

    /// The environment every service gets: deployer's own variables, then the
    /// configured ones. Secrets are added separately by each runtime.
    pub fn base_env(&self) -> Vec<(String, String)> {
        let mut env = self.deployer_env();
        env.extend(self.spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }

    /// The port the service itself listens on: its container's, for a
    /// docker release that publishes another.
    pub fn inner_port(&self) -> u16 {
        match (self.spec.runtime, self.spec.container_port) {
            (RuntimeKind::Docker | RuntimeKind::Swarm, Some(p)) => p,
            _ => self.spec.port,
        }
    }

    /// deployer's own variables: PORT, SERVICE_NAME, RELEASE; for a
    /// Python service, VIRTUAL_ENV and PATH with the release's venv first.
    pub fn deployer_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("PORT".to_string(), self.inner_port().to_string()),
            ("SERVICE_NAME".to_string(), self.service.clone()),
            ("RELEASE".to_string(), self.release.clone()),
        ];
        if let Some(venv) = self.venv() {
            let rest = match self.spec.runtime {
                // A process runs here: after the venv, deployer's own PATH.
                RuntimeKind::Process => {
                    std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_string())
                }
                _ => DEFAULT_PATH.to_string(),
            };
            let venv = venv.to_string_lossy().into_owned();
            env.push(("PATH".to_string(), format!("{venv}/bin:{rest}")));
            env.push(("VIRTUAL_ENV".to_string(), venv));
        }
        env
    }

    /// The release's venv, for a Python service not in a container.
    pub fn venv(&self) -> Option<PathBuf> {
        (self.spec.python.is_some() && self.spec.runtime.on_host())
            .then(|| self.dir().join(".venv"))
    }
}

/// What stops a release, as one shell command for the host to run later
/// (a release the proxy no longer sends to stops after its drain).
pub fn stop_shell(ctx: &ReleaseCtx) -> String {
    let grace = ctx.spec.stop_grace_secs;
    match ctx.spec.runtime {
        RuntimeKind::Docker => format!(
            "{} >/dev/null 2>&1; {} >/dev/null 2>&1",
            docker::stop_cmd(ctx).display(),
            docker::remove_container_cmd(ctx).display()
        ),
        RuntimeKind::Systemd => format!(
            "systemctl disable --now {} >/dev/null 2>&1",
            crate::cmd::quote(&systemd::unit_name(ctx))
        ),
        // Swarm replaces tasks itself; nothing drains behind a proxy.
        RuntimeKind::Swarm => "true".into(),
        // SIGTERM to the process group, SIGKILL after the grace.
        _ => format!(
            "pid=$(cut -d' ' -f1 {pidfile} 2>/dev/null); [ -n \"$pid\" ] || exit 0; \
             kill -TERM -\"$pid\" 2>/dev/null; i=0; \
             while kill -0 -\"$pid\" 2>/dev/null && [ $i -lt {ticks} ]; do sleep 0.1; i=$((i+1)); done; \
             kill -KILL -\"$pid\" 2>/dev/null; true",
            pidfile = crate::cmd::quote(&ctx.dirs.pid_file(&ctx.release).to_string_lossy()),
            ticks = grace * 10,
        ),
    }
}

/// Says that a port answers for something other than the release.
pub fn not_ours(ctx: &ReleaseCtx, listeners: &[ports::Listener]) -> String {
    match listeners {
        [] => format!(
            "port {} answered, but nothing listens there for release {}",
            ctx.spec.port, ctx.release
        ),
        _ => format!(
            "port {} is answered by {}, not by release {}: a process deployer did not start \
             for this release holds the port",
            ctx.spec.port,
            ports::describe(listeners),
            ctx.release
        ),
    }
}

/// A runtime action that failed, saying what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A command or file operation on the host failed.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The runtime cannot run on this host (no Docker engine, no systemd).
    #[error("{0}")]
    Unavailable(String),
    /// The release would not start or stop.
    #[error("{0}")]
    Release(String),
}

impl RuntimeError {
    /// A file operation's failure on this machine, with what it was doing.
    pub fn io(doing: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
        let doing = doing.into();
        move |source| RuntimeError::Host(HostError::Io { doing, source })
    }
}

/// A runtime, chosen per release.
pub enum Runtime {
    Process(process::ProcessRuntime),
    Docker(docker::DockerRuntime),
    Systemd(systemd::SystemdRuntime),
    Swarm(swarm::SwarmRuntime),
    /// Unit tests' stand-in (see `scripted.rs`).
    #[cfg(test)]
    Scripted(scripted::ScriptedRuntime),
}

impl Runtime {
    pub fn kind(&self) -> RuntimeKind {
        match self {
            Runtime::Process(_) => RuntimeKind::Process,
            Runtime::Docker(_) => RuntimeKind::Docker,
            Runtime::Systemd(_) => RuntimeKind::Systemd,
            Runtime::Swarm(_) => RuntimeKind::Swarm,
            #[cfg(test)]
            Runtime::Scripted(_) => RuntimeKind::Docker,
        }
    }

    /// Builds what the release needs beyond its files (an image, for docker).
    /// Returns the details line for the Build phase.
    pub async fn build(&self, ctx: &ReleaseCtx) -> Result<Option<String>, RuntimeError> {
        match self {
            Runtime::Process(_) => Ok(None),
            Runtime::Docker(d) => d.build(ctx).await.map(Some),
            Runtime::Systemd(s) => s.build(ctx).await.map(Some),
            Runtime::Swarm(s) => s.build(ctx).await.map(Some),
            #[cfg(test)]
            Runtime::Scripted(s) => s.build(ctx).await.map(Some),
        }
    }

    /// Undoes `build`: removes the release's image.
    pub async fn remove_build(&self, ctx: &ReleaseCtx) {
        match self {
            Runtime::Process(_) => {}
            Runtime::Docker(d) => d.remove_image(ctx).await,
            Runtime::Systemd(s) => s.remove_build(ctx).await,
            Runtime::Swarm(s) => s.remove_build(ctx).await,
            #[cfg(test)]
            Runtime::Scripted(s) => s.remove_build(ctx).await,
        }
    }

    pub async fn start(&self, ctx: &ReleaseCtx) -> Result<String, RuntimeError> {
        match self {
            Runtime::Process(p) => p.start(ctx).await,
            Runtime::Docker(d) => d.start(ctx).await,
            Runtime::Systemd(s) => s.start(ctx).await,
            Runtime::Swarm(s) => s.start(ctx).await,
            #[cfg(test)]
            Runtime::Scripted(s) => s.start(ctx).await,
        }
    }

    pub async fn stop(&self, ctx: &ReleaseCtx) -> Result<(), RuntimeError> {
        match self {
            Runtime::Process(p) => p.stop(ctx).await,
            Runtime::Docker(d) => d.stop(ctx).await,
            Runtime::Systemd(s) => s.stop(ctx).await,
            Runtime::Swarm(s) => s.stop(ctx).await,
            #[cfg(test)]
            Runtime::Scripted(s) => s.stop(ctx).await,
        }
    }

    /// Stops a release that a new one replaces next: as `stop`, but what
    /// can wait (removing a stopped container) happens while the new one
    /// starts.
    pub async fn stop_for_new(&self, ctx: &ReleaseCtx) -> Result<(), RuntimeError> {
        match self {
            Runtime::Docker(d) => d.stop_for_new(ctx).await,
            _ => self.stop(ctx).await,
        }
    }

    pub async fn liveness(&self, ctx: &ReleaseCtx) -> Liveness {
        match self {
            Runtime::Process(p) => p.liveness(ctx).await,
            Runtime::Docker(d) => d.liveness(ctx).await,
            Runtime::Systemd(s) => s.liveness(ctx).await,
            Runtime::Swarm(s) => s.liveness(ctx).await,
            #[cfg(test)]
            Runtime::Scripted(s) => s.liveness(ctx).await,
        }
    }

    /// Whether this release is what holds its port (`listeners`: who
    /// listens there now); why not, when it is not.
    pub async fn serves(
        &self,
        ctx: &ReleaseCtx,
        listeners: &[ports::Listener],
    ) -> Result<(), String> {
        if ports::cannot_tell(listeners) {
            return Ok(());
        }
        let ours = match self {
            Runtime::Process(p) => p.serves(ctx, listeners),
            Runtime::Docker(d) => return d.serves(ctx, listeners).await,
            Runtime::Systemd(_) => {
                let unit = format!("/{}", systemd::unit_name(ctx));
                listeners.iter().any(|l| l.cgroup.ends_with(&unit))
            }
            // Following the update to convergence proved that the tasks
            // that answer run the new spec.
            Runtime::Swarm(_) => true,
            #[cfg(test)]
            Runtime::Scripted(_) => true,
        };
        match ours {
            true => Ok(()),
            false => Err(not_ours(ctx, listeners)),
        }
    }

    /// A quick proof that the release holds its port, with no look at who
    /// else listens (a process release's own process tree); false when
    /// there is none, and [`Runtime::serves`] decides.
    pub async fn holds_port(&self, ctx: &ReleaseCtx) -> bool {
        match self {
            Runtime::Process(_) => {
                let ctx = ctx.clone();
                tokio::task::spawn_blocking(move || process::holds_port(&ctx))
                    .await
                    .unwrap_or(false)
            }
            _ => false,
        }
    }

    /// What shows a release's last `lines` log lines (from `since` on),
    /// each with its time; `None` for a process release, whose log is a
    /// file on this machine.
    pub fn log_cmd(
        &self,
        ctx: &ReleaseCtx,
        lines: usize,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Option<crate::cmd::Cmd> {
        match self {
            Runtime::Process(_) => None,
            Runtime::Docker(_) => Some(docker::log_cmd(ctx, lines, since)),
            Runtime::Systemd(_) => Some(systemd::journal_cmd(ctx, lines, since)),
            Runtime::Swarm(_) => Some(swarm::logs_cmd(
                &ctx.service,
                lines,
                since.map(|t| t.to_rfc3339()),
            )),
            #[cfg(test)]
            Runtime::Scripted(_) => None,
        }
    }

    /// Whether a release may start on its port now that the service's own
    /// releases have stopped (`listeners`: who listens there); why not.
    pub fn port_free(&self, ctx: &ReleaseCtx, listeners: &[ports::Listener]) -> Result<(), String> {
        match self {
            // Swarm publishes through its own proxy or the routing mesh.
            Runtime::Swarm(_) => Ok(()),
            // The unit tests' stand-in answers from the test process.
            #[cfg(test)]
            Runtime::Scripted(_) => Ok(()),
            _ if listeners.is_empty() || ports::cannot_tell(listeners) => Ok(()),
            _ => Err(format!(
                "port {} is in use by {}, which is not a release of '{}' that deployer runs; \
                 stop it or choose another port",
                ctx.spec.port,
                ports::describe(listeners),
                ctx.service
            )),
        }
    }

    /// Releases of a service that are running now, with their ports.
    pub async fn running(&self, dirs: &ServiceDirs, service: &str) -> Vec<(String, u16)> {
        match self {
            Runtime::Process(p) => p.running(dirs),
            Runtime::Docker(d) => d.running(service).await,
            Runtime::Systemd(s) => s.running(dirs, service).await,
            Runtime::Swarm(s) => s.running(service).await,
            #[cfg(test)]
            Runtime::Scripted(s) => s.running(),
        }
    }
}
