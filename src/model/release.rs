//! Releases: what a release is, its lifecycle, how it runs (stored with it
//! so a rollback can start it again) and what its transfer moved.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How a release runs: stored with each release so a rollback can start it
/// again. Holds secret names, never values.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunSpec {
    pub runtime: RuntimeKind,
    pub port: u16,
    pub build: Option<String>,
    pub start: Option<String>,
    pub dockerfile: String,
    pub env: BTreeMap<String, String>,
    pub secret_names: Vec<String>,
    pub health: HealthSpec,
    pub network: Option<String>,
    pub restart: String,
    pub stop_grace_secs: u64,
    /// The user a systemd unit runs as.
    #[serde(default)]
    pub user: Option<String>,
    /// What is backed up before this release replaces another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,
    /// The port the service listens on inside its container, when it is
    /// not `port` (`[docker] ports = "8080:80"`): `port` is published on
    /// the host, and the service gets this one as PORT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_port: Option<u16>,
    /// Set for a Python service (process and systemd methods): its
    /// dependencies go into a venv the release links as `.venv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<PythonSpec>,
    /// Set when a reverse proxy serves the service (`[proxy]`): `port` is
    /// then the release's own private port, and the proxy listens on the
    /// public one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySpec>,
    /// What the release may use (`[limits]`).
    #[serde(default, skip_serializing_if = "Limits::is_none")]
    pub limits: Limits,
    /// Set for the swarm method: how the service runs on the swarm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swarm: Option<SwarmSpec>,
}

/// A service on a Docker Swarm (`[swarm]`, `--replicas`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmSpec {
    pub replicas: u32,
    /// Where the manager pushes images and the nodes pull them from
    /// ("10.0.0.1:5000"); none: the manager's own image store (one node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// The overlay network the tasks (and the proxy) join.
    pub network: String,
    /// How `port` reaches the tasks.
    pub publish: SwarmPublish,
    /// Placement constraints ("node.role==worker").
    #[serde(default)]
    pub constraints: Vec<String>,
    /// Tasks replaced at once in an update.
    pub update_parallelism: u32,
    /// Seconds between two batches of an update.
    pub update_delay_secs: u64,
    /// Seconds a new task is watched before the update counts it a success.
    pub update_monitor_secs: u64,
}

/// How a swarm service's port is published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SwarmPublish {
    /// deployer's proxy (nginx) in a container on the manager, attached to
    /// the overlay network, sends to the healthy tasks found by Swarm's
    /// DNS; the tasks run in `dnsrr` endpoint mode. Works without IPVS.
    Proxy,
    /// Swarm's routing mesh (`--publish`, needs IPVS in the kernel).
    Mesh,
}

/// A service behind deployer's reverse proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxySpec {
    /// Where users reach the service; the proxy listens here.
    pub public_port: u16,
    /// How long a replaced release keeps serving what it has in flight
    /// before it stops.
    pub drain_secs: u64,
    /// Private ports for releases come from here (inclusive).
    pub private_ports: (u16, u16),
    /// Serve only requests for this name, so services can share a public
    /// port (80, say) by Host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// HTTPS on this port too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_port: Option<u16>,
    /// The certificate and key files on the host (PEM); without them, a
    /// certificate from deployer's internal CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_files: Option<(String, String)>,
}

impl ProxySpec {
    /// The name HTTPS certificates are for.
    pub fn cert_name(&self) -> &str {
        self.host.as_deref().unwrap_or("localhost")
    }
}

impl RunSpec {
    /// The port users reach the service on: the proxy's, or its own.
    pub fn public_port(&self) -> u16 {
        self.proxy.as_ref().map_or(self.port, |p| p.public_port)
    }
}

/// A Python service: what its dependencies are installed from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonSpec {
    /// `requirements.txt` (pip install -r) or `pyproject.toml` (pip
    /// install .).
    pub deps: String,
}

/// What one release may use, enforced by its runtime: docker's `--memory`
/// and `--cpus`, systemd's `MemoryMax=` and `CPUQuota=`, a transient
/// systemd scope for a process where systemd runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// CPUs (1.5 is one and a half).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
}

impl Limits {
    pub fn is_none(&self) -> bool {
        self.memory_bytes.is_none() && self.cpus.is_none()
    }

    /// `CPUQuota=` for systemd: 100% is one CPU.
    pub fn cpu_quota(&self) -> Option<String> {
        self.cpus
            .map(|c| format!("{}%", (c * 100.0).round() as u64))
    }

    /// Parses "512m", "1g", "64M", "100000k" or bytes.
    pub fn parse_memory(s: &str) -> Result<u64, MemoryError> {
        let bad = |why| MemoryError {
            value: s.to_string(),
            why,
        };
        let t = s.trim();
        let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
            Some(i) => t.split_at(i),
            None => (t, ""),
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| bad("is not a size like 512m or 1g".into()))?;
        let mult: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1 << 10,
            "m" | "mb" => 1 << 20,
            "g" | "gb" => 1 << 30,
            _ => {
                return Err(bad(format!("has an unknown unit '{unit}' (use k, m or g)")));
            }
        };
        let bytes = n
            .checked_mul(mult)
            .ok_or_else(|| bad("is too large".into()))?;
        // Docker's own floor; below it nothing starts.
        if bytes < 6 << 20 {
            return Err(bad("is too small (at least 6m)".into()));
        }
        Ok(bytes)
    }
}

/// What stopping a service's releases did: the releases stopped (named
/// by host when there are several); said the same way everywhere.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Stopped(pub Vec<String>);

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_slice() {
            [] => write!(f, "nothing was running"),
            [one] => write!(f, "stopped release {one}"),
            releases => write!(f, "stopped releases {}", releases.join(", ")),
        }
    }
}

/// The commit a release was made from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommitInfo {
    pub sha: String,
    /// The branch it was on, when HEAD was on one.
    pub branch: Option<String>,
    /// The first line of its message.
    pub subject: String,
}

/// A memory limit that is not one.
#[derive(Debug, thiserror::Error)]
#[error("memory '{value}' {why}")]
pub struct MemoryError {
    value: String,
    why: String,
}

#[cfg(test)]
impl RunSpec {
    /// A spec for unit tests; change fields with struct update syntax.
    pub fn example(runtime: RuntimeKind) -> RunSpec {
        RunSpec {
            runtime,
            port: 8090,
            build: None,
            start: None,
            dockerfile: "Dockerfile".into(),
            env: BTreeMap::new(),
            secret_names: vec!["API_KEY".into()],
            health: HealthSpec {
                path: "/health".into(),
                timeout_secs: 30,
                retries: 3,
                from_target: false,
            },
            network: None,
            restart: "unless-stopped".into(),
            stop_grace_secs: 10,
            user: None,
            backup: None,
            container_port: None,
            python: None,
            proxy: None,
            limits: Limits::default(),
            swarm: None,
        }
    }
}

impl RunSpec {
    /// The spec as it is stored and served: environment variable names
    /// only; their values stay in deployer's state directory (0600).
    pub fn without_env_values(&self) -> RunSpec {
        RunSpec {
            env: self
                .env
                .keys()
                .map(|k| (k.clone(), String::new()))
                .collect(),
            ..self.clone()
        }
    }
}

/// `[backup]`: what is saved on the target before a release replaces
/// another, and how it is checked and put back.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSpec {
    /// Backups kept (default 7).
    pub keep: Option<usize>,
    /// Backups older than this are removed (the newest never is).
    pub max_age_days: Option<u64>,
    /// Files and directories to archive, relative to the service's
    /// directory on the target (`BASE/NAME`).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Dumps, each with its check and its way back.
    #[serde(default)]
    pub commands: Vec<BackupCommand>,
    /// When the migration fails, restore the backup taken just before it.
    #[serde(default)]
    pub restore_on_failure: bool,
}

/// One dump: its output is the backup; `verify` and `restore` read it back
/// on their standard input.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupCommand {
    /// A file name for the dump (letters, digits, '-', '_').
    pub name: String,
    /// Writes the dump to stdout (`pg_dump --format=custom "$DATABASE_URL"`).
    pub dump: String,
    /// Reads the dump on stdin and fails when it is not sound
    /// (`pg_restore --list`).
    pub verify: Option<String>,
    /// Reads the dump on stdin and puts it back
    /// (`pg_restore --clean --if-exists -d "$DATABASE_URL"`).
    pub restore: Option<String>,
}

/// The runtime a release runs under, once `auto` is resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Process,
    Docker,
    Systemd,
    Swarm,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Process => "process",
            RuntimeKind::Docker => "docker",
            RuntimeKind::Systemd => "systemd",
            RuntimeKind::Swarm => "swarm",
        }
    }

    /// Whether releases run straight on the host (not in a container).
    pub fn on_host(self) -> bool {
        matches!(self, RuntimeKind::Process | RuntimeKind::Systemd)
    }
}

/// How health is verified.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HealthSpec {
    pub path: String,
    pub timeout_secs: u64,
    /// Consecutive 4xx answers (beyond the first) that fail early.
    pub retries: u32,
    /// Check from the target host itself (curl over SSH) instead of from
    /// deployer's machine.
    #[serde(default)]
    pub from_target: bool,
}

/// What the Transfer phase moved.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct TransferStats {
    /// Files in the release.
    pub files: u64,
    /// Bytes in the release.
    pub bytes: u64,
    /// Files whose content was sent (all of them for a local copy).
    #[serde(default)]
    pub uploaded_files: u64,
    #[serde(default)]
    pub uploaded_bytes: u64,
    /// Unchanged files copied from the previous release on the host
    /// instead of uploaded.
    #[serde(default)]
    pub linked_files: u64,
}

/// A release's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseStatus {
    /// Being deployed.
    Pending,
    /// What `current` points at.
    Current,
    /// Was current once; kept for rollback.
    Previous,
    /// Never became current.
    Failed,
    /// Pruned: its files are gone.
    Removed,
}

impl ReleaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseStatus::Pending => "pending",
            ReleaseStatus::Current => "current",
            ReleaseStatus::Previous => "previous",
            ReleaseStatus::Failed => "failed",
            ReleaseStatus::Removed => "removed",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "pending" => ReleaseStatus::Pending,
            "current" => ReleaseStatus::Current,
            "previous" => ReleaseStatus::Previous,
            "removed" => ReleaseStatus::Removed,
            _ => ReleaseStatus::Failed,
        }
    }
}

/// One release of a service: a directory (and for docker, an image).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Release {
    pub service_name: String,
    pub id: String,
    pub status: ReleaseStatus,
    pub job_id: String,
    pub content_hash: String,
    #[serde(serialize_with = "crate::model::time_format::ser")]
    pub created_at: DateTime<Utc>,
    /// How to run it again (no secret values, only their names).
    pub spec: RunSpec,
    /// The commit it was made from, for a git-driven release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<crate::model::CommitInfo>,
}
