//! The swarm method: deployer as the front end of a Docker Swarm. The
//! manager (this machine or an SSH host) builds each release's image,
//! pushes it to the registry the nodes pull from, and runs the service as
//! one Swarm service, `docker service create` the first time and a rolling
//! `docker service update --image` after: start-first, a batch at a time,
//! rolled back by Swarm itself when a new task fails. deployer does
//! nothing on the other nodes.
//!
//! What deployer adds to the image (`build.rs`): a static busybox under
//! `/.deployer/` for the health check (`HEALTHCHECK`, from `[health]`, so
//! a task joins Swarm's DNS only once healthy) and for the entry wrapper
//! that loads the service's environment and secrets from a Swarm secret
//! (never in the service spec in clear). In front (`proxy.rs`): deployer's
//! nginx in a container on the manager, attached to the overlay network,
//! sending to the healthy tasks found as `tasks.NAME`.

mod as_runtime;
mod build;
mod follow;
mod proxy;

pub use build::{build_script, registry_image};
pub use follow::{Progress, TaskLine, UpdateError};

use super::{ReleaseCtx, RuntimeError};
use crate::hosting::health::Liveness;
use crate::hosting::host::{Host, HostError};
use crate::model::{SwarmPublish, SwarmSpec};
use crate::support::cmd::{Cmd, quote};
use crate::support::secret::Secret;
use std::sync::Arc;
use std::time::Duration;

const LABEL_SERVICE: &str = "deployer.service";
const LABEL_RELEASE: &str = "deployer.release";
const LABEL_PORT: &str = "deployer.port";
const CMD_TIMEOUT: Duration = Duration::from_secs(120);
/// Where the entry wrapper finds the environment inside a task.
const ENV_TARGET: &str = "deployer.env";

pub struct SwarmRuntime {
    host: Arc<Host>,
}

/// The swarm spec of a swarm release (a spec without one is a bug).
pub fn spec(ctx: &ReleaseCtx) -> SwarmSpec {
    ctx.spec.swarm.clone().unwrap_or(SwarmSpec {
        replicas: 1,
        registry: None,
        network: "deployer".into(),
        publish: SwarmPublish::Proxy,
        constraints: Vec::new(),
        update_parallelism: 1,
        update_delay_secs: 0,
        update_monitor_secs: 5,
    })
}

/// Whether this engine is a swarm manager: "active true".
pub fn manager_cmd() -> Cmd {
    Cmd::new("docker").args([
        "info",
        "--format",
        "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
    ])
}

/// The service's environment and secrets, as the env file the entry
/// wrapper sources (`KEY='value'` lines); empty when it has none.
fn env_file(ctx: &ReleaseCtx) -> String {
    let values = ctx
        .spec
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(ctx.secrets.iter().map(|(k, s)| (k.as_str(), s.expose())));
    values
        .map(|(k, v)| format!("{k}={}\n", quote(v)))
        .collect::<String>()
}

/// The Swarm secret holding a release's environment: named by a hash of
/// its content, as Swarm secrets cannot change.
fn env_secret_name(ctx: &ReleaseCtx) -> Option<String> {
    let file = env_file(ctx);
    if file.is_empty() {
        return None;
    }
    let hex = blake3::hash(file.as_bytes()).to_hex();
    Some(format!("{}-env-{}", ctx.service, &hex[..12]))
}

/// Creates the release's env secret unless it exists; the content travels
/// in the command's environment, never in its arguments.
fn env_secret_cmd(ctx: &ReleaseCtx, name: &str) -> Cmd {
    let script = format!(
        "docker secret inspect {n} >/dev/null 2>&1 || printf '%s' \"$DEPLOYER_ENV_FILE\" | docker secret create --label {LABEL_SERVICE}={s} {n} - >/dev/null",
        n = quote(name),
        s = quote(&ctx.service),
    );
    Cmd::new("sh")
        .args(["-c", &script])
        .secret_env("DEPLOYER_ENV_FILE", Secret::new(env_file(ctx)))
}

/// The command a task runs: the image's own entrypoint and command, behind
/// the wrapper that loads the environment when there is one.
fn entry(
    image_entry: &[String],
    image_cmd: &[String],
    wrapped: bool,
) -> (Vec<String>, Vec<String>) {
    if !wrapped {
        return (image_entry.to_vec(), image_cmd.to_vec());
    }
    let wrapper = vec![
        "/.deployer/busybox".to_string(),
        "sh".to_string(),
        "-c".to_string(),
        format!("set -a; . /run/secrets/{ENV_TARGET}; set +a; exec \"$@\""),
        "deployer-env".to_string(),
    ];
    let args = image_entry.iter().chain(image_cmd).cloned().collect();
    (wrapper, args)
}

/// Words joined for a Docker CLI flag that splits them like a shell.
fn shell_words(words: &[String]) -> String {
    words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ")
}

/// What stays the same between `create` and `update`: the update policy,
/// limits, grace, labels and deployer's own variables.
fn common_flags(ctx: &ReleaseCtx, create: bool) -> Vec<String> {
    let s = spec(ctx);
    let (label, env) = if create {
        ("--label", "--env")
    } else {
        ("--label-add", "--env-add")
    };
    let mut f: Vec<String> = vec!["--detach".into()];
    for (k, v) in [
        (LABEL_SERVICE, ctx.service.clone()),
        (LABEL_RELEASE, ctx.release.clone()),
        (LABEL_PORT, ctx.spec.port.to_string()),
    ] {
        f.extend([label.to_string(), format!("{k}={v}")]);
    }
    for (k, v) in ctx.deployer_env() {
        f.extend([env.to_string(), format!("{k}={v}")]);
    }
    let secs = |n: u64| format!("{n}s");
    for (flag, value) in [
        ("--replicas", s.replicas.to_string()),
        ("--update-order", "start-first".into()),
        ("--update-parallelism", s.update_parallelism.to_string()),
        ("--update-delay", secs(s.update_delay_secs)),
        ("--update-monitor", secs(s.update_monitor_secs)),
        ("--update-failure-action", "rollback".into()),
        ("--rollback-order", "start-first".into()),
        ("--rollback-parallelism", s.update_parallelism.to_string()),
        ("--rollback-monitor", secs(s.update_monitor_secs)),
        ("--stop-grace-period", secs(ctx.spec.stop_grace_secs)),
    ] {
        f.extend([flag.to_string(), value]);
    }
    let limits = &ctx.spec.limits;
    f.extend([
        "--limit-memory".to_string(),
        limits.memory_bytes.unwrap_or(0).to_string(),
        "--limit-cpu".to_string(),
        limits.cpus.unwrap_or(0.0).to_string(),
    ]);
    f
}

/// `docker service create` for the first release.
pub fn create_cmd(ctx: &ReleaseCtx, image_entry: &[String], image_cmd: &[String]) -> Cmd {
    let s = spec(ctx);
    let secret = env_secret_name(ctx);
    let mut cmd = Cmd::new("docker")
        .args(["service", "create", "--name", &ctx.service])
        .args(common_flags(ctx, true))
        .args(["--network", &s.network]);
    cmd = match s.publish {
        SwarmPublish::Proxy => cmd.args(["--endpoint-mode", "dnsrr"]),
        SwarmPublish::Mesh => cmd.args([
            "--publish".to_string(),
            format!("published={},target={}", ctx.spec.port, ctx.inner_port()),
        ]),
    };
    for c in &s.constraints {
        cmd = cmd.args(["--constraint", c]);
    }
    if let Some(name) = &secret {
        cmd = cmd.args([
            "--secret".to_string(),
            format!("source={name},target={ENV_TARGET}"),
        ]);
    }
    let (entrypoint, args) = entry(image_entry, image_cmd, secret.is_some());
    if !entrypoint.is_empty() {
        cmd = cmd.args(["--entrypoint".to_string(), shell_words(&entrypoint)]);
    }
    cmd.arg(registry_image(ctx)).args(args)
}

/// `docker service update` to a release: what differs from the running
/// spec (`was`: its secrets and constraints) is removed and added.
pub fn update_cmd(
    ctx: &ReleaseCtx,
    image_entry: &[String],
    image_cmd: &[String],
    was: &RunningSpec,
) -> Cmd {
    let s = spec(ctx);
    let secret = env_secret_name(ctx);
    let mut cmd = Cmd::new("docker")
        .args(["service", "update"])
        .args(common_flags(ctx, false))
        .args(["--image", &registry_image(ctx)]);
    for old in was.secrets.iter().filter(|o| Some(*o) != secret.as_ref()) {
        cmd = cmd.args(["--secret-rm", old]);
    }
    if let Some(name) = secret.as_ref().filter(|n| !was.secrets.contains(n)) {
        cmd = cmd.args([
            "--secret-add".to_string(),
            format!("source={name},target={ENV_TARGET}"),
        ]);
    }
    for old in was
        .constraints
        .iter()
        .filter(|c| !s.constraints.contains(c))
    {
        cmd = cmd.args(["--constraint-rm", old]);
    }
    for new in s
        .constraints
        .iter()
        .filter(|c| !was.constraints.contains(c))
    {
        cmd = cmd.args(["--constraint-add", new]);
    }
    let (entrypoint, args) = entry(image_entry, image_cmd, secret.is_some());
    cmd.args(["--entrypoint".to_string(), shell_words(&entrypoint)])
        .args(["--args".to_string(), shell_words(&args)])
        .arg(&ctx.service)
}

/// The service's spec as Swarm holds it: what an update must take away.
#[derive(Debug, Default, PartialEq)]
pub struct RunningSpec {
    pub release: String,
    pub port: u16,
    pub replicas: u32,
    pub secrets: Vec<String>,
    pub constraints: Vec<String>,
}

impl RunningSpec {
    fn parse(json: &str) -> Option<RunningSpec> {
        let v: serde_json::Value = serde_json::from_str(json.trim()).ok()?;
        let label = |k: &str| v["Labels"][k].as_str().unwrap_or("").to_string();
        let strings = |x: &serde_json::Value, key: Option<&str>| -> Vec<String> {
            x.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| match key {
                            Some(k) => i[k].as_str(),
                            None => i.as_str(),
                        })
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default()
        };
        let task = &v["TaskTemplate"];
        Some(RunningSpec {
            release: label(LABEL_RELEASE),
            port: label(LABEL_PORT).parse().unwrap_or(0),
            replicas: v["Mode"]["Replicated"]["Replicas"].as_u64().unwrap_or(0) as u32,
            secrets: strings(&task["ContainerSpec"]["Secrets"], Some("SecretName")),
            constraints: strings(&task["Placement"]["Constraints"], None),
        })
    }
}

pub fn inspect_spec_cmd(service: &str) -> Cmd {
    Cmd::new("docker").args(["service", "inspect", "--format", "{{json .Spec}}", service])
}

/// The image's own entrypoint and command (JSON arrays or null).
pub fn image_entry_cmd(ctx: &ReleaseCtx) -> Cmd {
    Cmd::new("docker").args([
        "image",
        "inspect",
        "--format",
        "{{json .Config.Entrypoint}}\t{{json .Config.Cmd}}",
        &registry_image(ctx),
    ])
}

pub fn logs_cmd(service: &str, lines: usize, since: Option<String>) -> Cmd {
    let mut cmd = Cmd::new("docker").args([
        "service",
        "logs",
        "--timestamps",
        "--tail",
        &lines.to_string(),
    ]);
    if let Some(t) = since {
        cmd = cmd.args(["--since", &t]);
    }
    cmd.arg(service)
}

impl SwarmRuntime {
    pub fn new(host: Arc<Host>) -> Self {
        SwarmRuntime { host }
    }

    /// Why this host cannot run swarm services, if it cannot.
    pub async fn manager(&self) -> Result<(), RuntimeError> {
        let out = self
            .host
            .run(&manager_cmd(), Duration::from_secs(10))
            .await
            .map_err(|e| RuntimeError::Unavailable(e.to_string()))?;
        match out.stdout.trim() {
            "active true" => Ok(()),
            "active false" => Err(RuntimeError::Unavailable(format!(
                "{} is a swarm worker, not a manager: deploy to a manager (docker node ls there)",
                self.host.name()
            ))),
            _ if !out.success() => Err(RuntimeError::Unavailable(format!(
                "no Docker engine answers on {}: {}",
                self.host.name(),
                out.tail(1)
            ))),
            _ => Err(RuntimeError::Unavailable(format!(
                "the Docker engine on {} is not in a swarm: run `docker swarm init` there (or join it to one as a manager)",
                self.host.name()
            ))),
        }
    }

    pub async fn build(&self, ctx: &ReleaseCtx) -> Result<String, RuntimeError> {
        let out = self
            .host
            .run(
                &Cmd::new("sh").args(["-c", &build_script(ctx)]),
                build::BUILD_TIMEOUT,
            )
            .await?;
        if !out.success() {
            return Err(RuntimeError::Release(format!(
                "building the image on the manager failed:\n{}",
                out.tail(12)
            )));
        }
        Ok(match &spec(ctx).registry {
            Some(r) => format!(
                "Docker image built and pushed to {r}: {}",
                registry_image(ctx)
            ),
            None => format!("Docker image built: {}", registry_image(ctx)),
        })
    }

    pub async fn remove_build(&self, ctx: &ReleaseCtx) {
        let rm = Cmd::new("docker").args(["rmi", &registry_image(ctx), &super::docker::image(ctx)]);
        let _ = self.host.run(&rm, CMD_TIMEOUT).await;
        if let Some(name) = env_secret_name(ctx) {
            let _ = self
                .host
                .run(
                    &Cmd::new("docker").args(["secret", "rm", &name]),
                    CMD_TIMEOUT,
                )
                .await;
        }
    }

    /// The service as Swarm runs it, if it exists.
    pub async fn running_spec(&self, service: &str) -> Option<RunningSpec> {
        let out = self
            .host
            .run(&inspect_spec_cmd(service), CMD_TIMEOUT)
            .await
            .ok()?;
        if !out.success() {
            return None;
        }
        RunningSpec::parse(&out.stdout)
    }

    /// Creates the service, or updates it to this release (a rolling,
    /// start-first update), and makes sure the proxy runs in front.
    pub async fn start(&self, ctx: &ReleaseCtx) -> Result<String, RuntimeError> {
        let s = spec(ctx);
        let was = self.running_spec(&ctx.service).await;
        if let Some(was) = was.as_ref().filter(|w| w.release == ctx.release) {
            // The release is the service's already (after `stop`): its tasks
            // come back as they were.
            let scale = Cmd::new("docker").args([
                "service".to_string(),
                "scale".to_string(),
                "--detach".to_string(),
                format!("{}={}", ctx.service, s.replicas),
            ]);
            self.host.run_ok(&scale, CMD_TIMEOUT).await?;
            if s.publish == SwarmPublish::Proxy {
                self.ensure_proxy(ctx).await?;
            }
            return Ok(format!(
                "Swarm service {} scaled from {} to {} replica(s)",
                ctx.service, was.replicas, s.replicas
            ));
        }
        if let Some(missing) = ctx
            .spec
            .secret_names
            .iter()
            .find(|n| !ctx.secrets.iter().any(|(k, _)| k == *n))
        {
            return Err(RuntimeError::Release(format!(
                "secret {missing} has no value here, and the swarm service would lose it: set it in deployer's environment or secrets_file"
            )));
        }
        self.ensure_network(&s.network).await?;
        if let Some(name) = env_secret_name(ctx) {
            self.host
                .run_ok(&env_secret_cmd(ctx, &name), CMD_TIMEOUT)
                .await?;
        }
        let out = self.host.run_ok(&image_entry_cmd(ctx), CMD_TIMEOUT).await?;
        let (image_entry, image_cmd) = parse_entry(&out.stdout);
        let details = match was {
            None => {
                let cmd = create_cmd(ctx, &image_entry, &image_cmd);
                self.host.run_ok(&cmd, CMD_TIMEOUT).await?;
                format!(
                    "Swarm service {} created: {} replica(s) of {}",
                    ctx.service,
                    s.replicas,
                    registry_image(ctx)
                )
            }
            Some(was) => {
                let cmd = update_cmd(ctx, &image_entry, &image_cmd, &was);
                self.host.run_ok(&cmd, CMD_TIMEOUT).await?;
                format!(
                    "Swarm service {} updating to {} ({} replica(s), start-first, {} at a time)",
                    ctx.service,
                    registry_image(ctx),
                    s.replicas,
                    s.update_parallelism
                )
            }
        };
        if s.publish == SwarmPublish::Proxy {
            self.ensure_proxy(ctx).await?;
        }
        Ok(details)
    }

    async fn ensure_network(&self, net: &str) -> Result<(), RuntimeError> {
        let inspect =
            Cmd::new("docker").args(["network", "inspect", "--format", "{{.Driver}}", net]);
        let out = self.host.run(&inspect, CMD_TIMEOUT).await?;
        if out.success() {
            return match out.stdout.trim() {
                "overlay" => Ok(()),
                other => Err(RuntimeError::Release(format!(
                    "network {net} exists with driver {other}; swarm services need an overlay network ([swarm] network)"
                ))),
            };
        }
        let create = Cmd::new("docker").args([
            "network",
            "create",
            "--driver",
            "overlay",
            "--attachable",
            net,
        ]);
        self.host.run_ok(&create, CMD_TIMEOUT).await?;
        Ok(())
    }

    /// A rolling restart of every task (`docker service update --force`),
    /// followed until it converges.
    pub async fn restart(&self, ctx: &ReleaseCtx) -> Result<String, RuntimeError> {
        let cmd =
            Cmd::new("docker").args(["service", "update", "--detach", "--force", &ctx.service]);
        self.host.run_ok(&cmd, CMD_TIMEOUT).await?;
        // Swarm clears the update status when it takes the update, and
        // reports it once its updater begins.
        for _ in 0..50 {
            if self.progress(ctx).await?.update.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.follow(ctx, Self::update_limit(ctx), &|_| {})
            .await
            .map(|p| p.summary())
    }

    /// Scales the service to nothing, when it runs this release, and
    /// stops its proxy.
    pub async fn stop(&self, ctx: &ReleaseCtx) -> Result<(), RuntimeError> {
        match self.running_spec(&ctx.service).await {
            Some(was) if was.release == ctx.release && was.replicas > 0 => {
                self.remove_proxy(&ctx.service).await;
                let cmd = Cmd::new("docker").args([
                    "service".to_string(),
                    "scale".to_string(),
                    "--detach".to_string(),
                    format!("{}=0", ctx.service),
                ]);
                self.host.run_ok(&cmd, CMD_TIMEOUT).await?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Removes the service and its proxy (a first deploy taken back).
    pub async fn remove(&self, service: &str) -> Result<(), RuntimeError> {
        let out = self
            .host
            .run(
                &Cmd::new("docker").args(["service", "rm", service]),
                CMD_TIMEOUT,
            )
            .await?;
        self.remove_proxy(service).await;
        if out.success() || out.stderr.contains("not found") {
            Ok(())
        } else {
            Err(RuntimeError::Host(HostError::Failed {
                doing: format!("removing swarm service {service}"),
                output: out.tail(3),
            }))
        }
    }

    /// Alive unless Swarm rolled the update back or paused it.
    pub async fn liveness(&self, ctx: &ReleaseCtx) -> Liveness {
        match self.progress(ctx).await {
            Ok(p) if p.failed() => Liveness::Exited {
                how: p.update_said(),
                log_tail: String::new(),
            },
            _ => Liveness::Alive,
        }
    }

    /// The release the service runs, with its port, unless scaled to 0.
    pub async fn running(&self, service: &str) -> Vec<(String, u16)> {
        match self.running_spec(service).await {
            Some(s) if s.replicas > 0 && !s.release.is_empty() => vec![(s.release, s.port)],
            _ => Vec::new(),
        }
    }
}

/// `["a","b"]\tnull` → the image's entrypoint and command.
fn parse_entry(out: &str) -> (Vec<String>, Vec<String>) {
    let (e, c) = out.trim().split_once('\t').unwrap_or((out.trim(), "null"));
    let list = |s: &str| {
        serde_json::from_str::<Option<Vec<String>>>(s)
            .ok()
            .flatten()
            .unwrap_or_default()
    };
    (list(e), list(c))
}

#[cfg(test)]
mod tests;
