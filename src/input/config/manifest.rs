//! `service.toml`: a service's manifest and its tables.

use super::{ConfigError, MANIFEST_FILE, Method, parse_toml, read_file};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// `service.toml`: a service's manifest.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: Option<String>,
    /// The service's droplet id in the registry.
    pub droplet_id: Option<i64>,
    pub port: Option<u16>,
    pub method: Option<Method>,
    /// A shell command run in the release directory during Build.
    pub build: Option<String>,
    /// The process method's start command, run with `sh -c` in the release.
    pub start: Option<String>,
    /// A migration, run against the new release after Build (and its
    /// backup) and before the old release stops.
    pub migrate: Option<String>,
    /// The Dockerfile for the docker method, relative to the service directory.
    pub dockerfile: Option<String>,
    /// How many successful releases to keep (default 5).
    pub keep_releases: Option<usize>,
    /// Overrides `defaults.keep_days`.
    pub keep_days: Option<u64>,
    /// Seconds between SIGTERM and SIGKILL when stopping (default 10).
    pub stop_grace_secs: Option<u64>,
    #[serde(default)]
    pub health: HealthConfig,
    /// Environment variables given to the service.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Names of secrets: values come from deployer's environment or secrets file.
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub docker: DockerConfig,
    #[serde(default)]
    pub systemd: SystemdConfig,
    /// Hosts to deploy to (`user@host:port`), when not this machine and not
    /// given with `--host`.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub rollout: RolloutConfig,
    #[serde(default)]
    pub tests: TestsConfig,
    /// Requests the new release must answer as expected after its health
    /// check (`[[smoke]]`).
    #[serde(default)]
    pub smoke: Vec<SmokeCheck>,
    /// What is backed up on the target before every deploy.
    pub backup: Option<crate::model::BackupSpec>,
    /// `[limits]`: memory, CPUs and the job's time limit.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// `[proxy]`: a reverse proxy in front, for deploys without a gap.
    pub proxy: Option<ProxyConfig>,
    /// `[python]`: how a Python service starts.
    #[serde(default)]
    pub python: PythonConfig,
    /// `[[pipeline]]`: replaces deployer.toml's stages for this service.
    #[serde(default)]
    pub pipeline: Vec<crate::integrations::stages::Stage>,
    /// `[swarm]`: how the swarm method runs the service.
    #[serde(default)]
    pub swarm: SwarmConfig,
}

/// `[swarm]` in a manifest.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwarmConfig {
    /// Tasks to run (default 1; flag: --replicas).
    pub replicas: Option<u32>,
    /// A registry every node can pull from, "HOST:PORT" (default: none,
    /// the manager's own images, for a single-node swarm).
    pub registry: Option<String>,
    /// The overlay network of the tasks (default "deployer"; created,
    /// attachable, when missing).
    pub network: Option<String>,
    /// "proxy" (default: deployer's proxy in a container on the manager)
    /// or "mesh" (Swarm's routing mesh; needs IPVS).
    pub publish: Option<String>,
    /// Placement constraints, as `docker service create --constraint`.
    #[serde(default)]
    pub constraints: Vec<String>,
    /// Tasks replaced at once (default 1).
    pub update_parallelism: Option<u32>,
    /// Seconds between batches (default 0).
    pub update_delay_secs: Option<u64>,
    /// Seconds each new task is watched before the next batch (default 5).
    pub update_monitor_secs: Option<u64>,
}

/// `[proxy]` in a manifest.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// The public port the proxy listens on (flag: --proxy-port).
    pub port: Option<u16>,
    /// Seconds a replaced release keeps serving in-flight requests
    /// (default 10).
    pub drain_secs: Option<u64>,
    /// "LOW-HIGH": where releases' private ports come from (default
    /// 20000-29999).
    pub private_ports: Option<String>,
    /// Only requests for this host name ("api.example.com"): services
    /// with different names can share the public port.
    pub host: Option<String>,
    /// HTTPS on this port too, with a certificate from deployer's
    /// internal CA for `host`, or the files below.
    pub tls_port: Option<u16>,
    /// A certificate (PEM, full chain) on the server, as certbot writes it.
    pub tls_certificate: Option<String>,
    /// Its key (PEM) on the server.
    pub tls_key: Option<String>,
}

/// `[python]` in a manifest.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PythonConfig {
    /// The ASGI app, "module:app" (default: `app` defined in main.py or
    /// app.py), started with uvicorn when there is no `start`.
    pub asgi: Option<String>,
    /// The address uvicorn binds (default 127.0.0.1).
    pub bind: Option<String>,
}

/// `[limits]` in a manifest.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// "512m", "1g" (docker --memory, systemd MemoryMax=).
    pub memory: Option<String>,
    /// CPUs, may be fractional (docker --cpus, systemd CPUQuota=).
    pub cpus: Option<f64>,
    /// The whole job's time limit, overriding `defaults.job_timeout_secs`.
    pub job_timeout_secs: Option<u64>,
}

/// One smoke check: a GET to the new release and what it must answer.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmokeCheck {
    /// The path to GET, such as `/version`.
    pub path: String,
    /// The status expected (default 200).
    pub status: Option<u16>,
    /// Text the body must contain.
    pub body_contains: Option<String>,
    /// A field of a JSON body (`a.b` for nested ones) that must be there...
    pub json_field: Option<String>,
    /// ... and, when given, hold this value.
    pub json_equals: Option<serde_json::Value>,
    /// The most the answer may take, in milliseconds.
    pub max_ms: Option<u64>,
}

/// Tests run before a release may start (the seeds' deploy scripts).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestsConfig {
    /// Run on this machine, in the service directory, before anything is
    /// transferred (`pytest -q`, `cargo test`).
    pub local: Option<String>,
    /// Run on each target, in the new release after Build.
    pub server: Option<String>,
}

/// `[rollout]` in a manifest: how a deploy to several hosts proceeds.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    /// Hosts in the first (canary) wave. Default 1.
    pub canary: Option<usize>,
    /// Hosts deployed at once in each later wave. Default 4.
    pub parallel: Option<usize>,
    /// When a wave fails, also roll back hosts that earlier waves switched.
    /// Default false: they keep the new release.
    pub rollback_switched: Option<bool>,
}

/// `[systemd]` in a manifest.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemdConfig {
    /// The user the unit runs as (default: root, systemd's default).
    pub user: Option<String>,
}

/// `[health]` in a manifest.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Path polled on the service's port (default `/health`).
    pub path: Option<String>,
    /// How long the service has to become healthy (default 30).
    pub timeout_secs: Option<u64>,
    /// Consecutive unhealthy answers, once the service answers at all, that
    /// fail the phase before the deadline (seed: "retry up to 3 times").
    pub retries: Option<u32>,
    /// Where the check runs: `deployer` (default, HTTP from this machine)
    /// or `target` (curl on the host, over SSH), for a port a firewall keeps
    /// from deployer's machine.
    pub from: Option<HealthFrom>,
}

/// Where a health check runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthFrom {
    Deployer,
    Target,
}

/// `[docker]` in a manifest.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    /// Network the container joins (default: deployer's `defaults.network`).
    pub network: Option<String>,
    /// Restart policy (default `unless-stopped`).
    pub restart: Option<String>,
    /// "HOST:CONTAINER": publish the container's port on another host port.
    pub ports: Option<String>,
}

impl Manifest {
    /// Reads `service.toml` from a service directory; a directory without one
    /// gives an empty manifest (flags then supply what is needed).
    pub fn load_from_dir(dir: &Path) -> Result<Option<Self>, ConfigError> {
        let path = dir.join(MANIFEST_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let text = read_file(&path)?;
        parse_toml(&text, &path.display().to_string()).map(Some)
    }
}
