//! Runtimes run a release: build it, start it, tell whether it is alive, and
//! stop it. `process` runs it as a detached process on this machine;
//! `docker` builds an image on the target and runs a container; `systemd`
//! writes a unit (and a Python venv) per release on a server. Docker and
//! systemd commands are built as data (`Cmd`) and run by the host.

pub mod docker;
pub mod ports;
pub mod process;
mod process_as_runtime;
#[cfg(test)]
pub mod scripted;
pub mod swarm;
pub mod systemd;

use crate::hosting::health::Liveness;
use crate::hosting::host::Host;
use crate::hosting::host::HostError;
use crate::hosting::release::ServiceDirs;
use crate::model::{RunSpec, RuntimeKind};
use crate::support::secret::Secret;
use std::path::PathBuf;
use std::sync::Arc;

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

/// Says that a port answers for something other than the release.
pub fn not_ours(ctx: &ReleaseCtx, listeners: &[ports::Listener]) -> PortError {
    let (port, release) = (ctx.spec.port, ctx.release.clone());
    match listeners {
        [] => PortError::NobodyListens { port, release },
        _ => PortError::HeldByOther {
            port,
            by: ports::describe(listeners),
            release,
        },
    }
}

/// Why a release does not hold its port, or may not take it.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("port {port} answered, but nothing listens there for release {release}")]
    NobodyListens { port: u16, release: String },
    #[error(
        "port {port} is answered by {by}, not by release {release}: a process deployer did not \
         start for this release holds the port"
    )]
    HeldByOther {
        port: u16,
        by: String,
        release: String,
    },
    #[error(
        "port {port} is in use by {by}, which is not a release of '{service}' that deployer \
         runs; stop it or choose another port"
    )]
    InUse {
        port: u16,
        by: String,
        service: String,
    },
    /// The container that should publish the port does not.
    #[error("container {container} of release {release} {problem}")]
    Container {
        container: String,
        release: String,
        problem: String,
    },
    #[error("asking who holds the port: {0}")]
    Host(#[from] HostError),
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
    /// A swarm update did not converge.
    #[error(transparent)]
    Update(#[from] swarm::UpdateError),
}

impl RuntimeError {
    /// A file operation's failure on this machine, with what it was doing.
    pub fn io(doing: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
        let doing = doing.into();
        move |source| RuntimeError::Host(HostError::Io { doing, source })
    }
}

/// A runtime's answer, boxed so that runtimes can be chosen at run time.
pub type Fut<'a, T> = futures_util::future::BoxFuture<'a, T>;

/// What every runtime does for a release: process, docker, systemd and
/// swarm each implement it, and the engine knows no other. A host's four
/// are in its [`Runtimes`].
pub trait Runtime: Send + Sync {
    fn kind(&self) -> RuntimeKind;

    /// Builds what the release needs beyond its files (an image, a venv
    /// and unit). Returns the details line for the Build phase.
    fn build<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, Result<Option<String>, RuntimeError>>;

    /// Whether [`Runtime::build`] does anything (a process release is its
    /// files).
    fn builds(&self) -> bool {
        true
    }

    /// Undoes `build`: removes the release's image or unit.
    fn remove_build<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, ()>;

    fn start<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, Result<String, RuntimeError>>;

    /// Waits until a start has taken everywhere it runs (every swarm task,
    /// not the first one the health check finds).
    fn settle<'a>(&'a self, _ctx: &'a ReleaseCtx) -> Fut<'a, Result<(), RuntimeError>> {
        Box::pin(async { Ok(()) })
    }

    fn stop<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, Result<(), RuntimeError>>;

    /// Stops a release that a new one replaces next: as `stop`, but what
    /// can wait (removing a stopped container) happens while the new one
    /// starts.
    fn stop_for_new<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, Result<(), RuntimeError>> {
        self.stop(ctx)
    }

    /// What stops a release, as one shell command for the host to run
    /// later (a release the proxy no longer sends to stops after its
    /// drain).
    fn stop_shell(&self, ctx: &ReleaseCtx) -> String;

    /// Whether the runtime replaces a service's old releases by itself
    /// (a swarm update): deployer then never stops one.
    fn replaces_itself(&self) -> bool {
        false
    }

    /// A restart in place that keeps serving (swarm: task by task);
    /// `None` when the runtime has none and the release is stopped and
    /// started again.
    fn restart_in_place<'a>(
        &'a self,
        _ctx: &'a ReleaseCtx,
    ) -> Fut<'a, Option<Result<String, RuntimeError>>> {
        Box::pin(async { None })
    }

    fn liveness<'a>(&'a self, ctx: &'a ReleaseCtx) -> Fut<'a, Liveness>;

    /// Whether this release is among `listeners` (who listens on its port
    /// now); why not, when it is not.
    fn owns<'a>(
        &'a self,
        ctx: &'a ReleaseCtx,
        listeners: &'a [ports::Listener],
    ) -> Fut<'a, Result<(), PortError>>;

    /// A quick proof that the release holds its port, with no look at who
    /// else listens (a process release's own process tree); false when
    /// there is none, and [`serves`] decides.
    fn holds_port<'a>(&'a self, _ctx: &'a ReleaseCtx) -> Fut<'a, bool> {
        Box::pin(async { false })
    }

    /// Whether the runtime publishes the port itself (swarm's routing
    /// mesh or proxy), so no listener on this host stands in its way.
    fn publishes_itself(&self) -> bool {
        false
    }

    /// What shows a release's last `lines` log lines (from `since` on),
    /// each with its time; `None` for a process release, whose log is a
    /// file on this machine.
    fn log_cmd(
        &self,
        ctx: &ReleaseCtx,
        lines: usize,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Option<crate::support::cmd::Cmd>;

    /// How many of the release's replicas are ready, for those that have
    /// replicas (`2/3`).
    fn replicas<'a>(&'a self, _ctx: &'a ReleaseCtx) -> Fut<'a, Option<String>> {
        Box::pin(async { None })
    }

    /// Releases of a service that are running now, with their ports.
    fn running<'a>(
        &'a self,
        dirs: &'a ServiceDirs,
        service: &'a str,
    ) -> Fut<'a, Vec<(String, u16)>>;

    /// What Build would run, for `deploy --dry-run`.
    fn describe_build(&self, ctx: &ReleaseCtx) -> String;

    /// What Start Service would run, for `deploy --dry-run`.
    fn describe_start(&self, ctx: &ReleaseCtx) -> String;

    /// Whether this release is what holds its port (`listeners`: who
    /// listens there now); why not, when it is not.
    fn serves<'a>(
        &'a self,
        ctx: &'a ReleaseCtx,
        listeners: &'a [ports::Listener],
    ) -> Fut<'a, Result<(), PortError>> {
        match ports::cannot_tell(listeners) {
            true => Box::pin(async { Ok(()) }),
            false => self.owns(ctx, listeners),
        }
    }

    /// Whether a release may start on its port now that the service's own
    /// releases have stopped (`listeners`: who listens there); why not.
    fn port_free(&self, ctx: &ReleaseCtx, listeners: &[ports::Listener]) -> Result<(), PortError> {
        if self.publishes_itself() || listeners.is_empty() || ports::cannot_tell(listeners) {
            return Ok(());
        }
        Err(PortError::InUse {
            port: ctx.spec.port,
            by: ports::describe(listeners),
            service: ctx.service.clone(),
        })
    }
}

/// A host's runtimes, one per kind. The docker, systemd and swarm ones are
/// also at hand by name, for what only they do (an engine's version, a
/// unit's availability, a swarm's manager).
pub struct Runtimes {
    pub process: Arc<process::ProcessRuntime>,
    pub docker: Arc<docker::DockerRuntime>,
    pub systemd: Arc<systemd::SystemdRuntime>,
    pub swarm: Arc<swarm::SwarmRuntime>,
    /// What each kind runs on; the four above unless replaced.
    slots: [Arc<dyn Runtime>; 4],
}

impl Runtimes {
    pub fn new(host: Arc<Host>) -> Self {
        let process = Arc::new(process::ProcessRuntime::default());
        let docker = Arc::new(docker::DockerRuntime::new(host.clone()));
        let systemd = Arc::new(systemd::SystemdRuntime::new(host.clone()));
        let swarm = Arc::new(swarm::SwarmRuntime::new(host));
        Runtimes {
            slots: [
                process.clone(),
                docker.clone(),
                systemd.clone(),
                swarm.clone(),
            ],
            process,
            docker,
            systemd,
            swarm,
        }
    }

    /// Every kind runs on `runtime` (the engine's unit tests' stand-in).
    pub fn all_on(self, runtime: Arc<dyn Runtime>) -> Self {
        Runtimes {
            slots: std::array::from_fn(|_| runtime.clone()),
            ..self
        }
    }

    pub fn get(&self, kind: RuntimeKind) -> &dyn Runtime {
        let i = match kind {
            RuntimeKind::Process => 0,
            RuntimeKind::Docker => 1,
            RuntimeKind::Systemd => 2,
            RuntimeKind::Swarm => 3,
        };
        self.slots[i].as_ref()
    }
}
