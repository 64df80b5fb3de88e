//! Configuration input, the first stage of the two-stage input: parse and
//! check what the user gave, with no I/O beyond reading the files.
//!
//! Two files exist. `deployer.toml` configures deployer itself (target,
//! registry, state directory, defaults); it is found through `--config` or
//! `DEPLOYER_CONFIG` and is optional. `service.toml`, the manifest, lives in a
//! service's directory and describes that service; it is optional too, since
//! every field can be given as a flag. Layering, lowest first: file →
//! environment (the seeds' names) → flags.
//!
//! Errors name the file, the key path and the line:
//! `service.toml:3: port: invalid type: string "x", expected u16`.

use crate::support::secret::Secret;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The manifest's file name inside a service directory.
pub const MANIFEST_FILE: &str = "service.toml";

/// A configuration error that names where the problem is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}{line}: {key}{message}", line = line.map(|l| format!(":{l}")).unwrap_or_default(), key = if key_path.is_empty() { String::new() } else { format!("{key_path}: ") })]
pub struct ConfigError {
    /// The file (or `environment` / `flags`) the bad value came from.
    pub file: String,
    /// The key path, such as `health.timeout_secs`; empty for the whole file.
    pub key_path: String,
    /// 1-based line of the bad value, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl From<ConfigError> for crate::support::error::Failure {
    fn from(e: ConfigError) -> Self {
        crate::support::error::Failure::invalid(e.to_string())
    }
}

impl ConfigError {
    pub fn new(
        file: impl Into<String>,
        key_path: impl Into<String>,
        message: impl std::fmt::Display,
    ) -> Self {
        ConfigError {
            file: file.into(),
            key_path: key_path.into(),
            line: None,
            message: message.to_string(),
        }
    }
}

/// Parses a TOML document into `T`, turning errors into [`ConfigError`]s
/// with the key path and line.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &str,
) -> Result<T, ConfigError> {
    let line_of = |span: Option<std::ops::Range<usize>>| {
        span.map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
    };
    let de = toml::Deserializer::parse(text).map_err(|e| ConfigError {
        file: file.to_string(),
        key_path: String::new(),
        line: line_of(e.span()),
        message: e.message().trim().to_string(),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        ConfigError {
            file: file.to_string(),
            key_path: if path == "." { String::new() } else { path },
            line: line_of(inner.span()),
            message: inner.message().trim().to_string(),
        }
    })
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path.display().to_string(), "", format!("cannot read: {e}")))
}

/// How a service is run on its target, as the user chose it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// A plain process, detached from deployer (the embedded default).
    Process,
    /// A Docker container from an image built on the target.
    Docker,
    /// A systemd unit per release on a host where systemd is init.
    Systemd,
    /// A Docker Swarm service, updated in rolling fashion by the manager.
    Swarm,
    /// Docker when an engine answers, else a process.
    Auto,
}

/// A deployment method deployer does not have.
#[derive(Debug, thiserror::Error)]
pub enum MethodError {
    #[error("unknown deployment method '{0}' (expected process, docker, systemd, swarm or auto)")]
    Unknown(String),
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Process => "process",
            Method::Docker => "docker",
            Method::Systemd => "systemd",
            Method::Swarm => "swarm",
            Method::Auto => "auto",
        }
    }

    pub fn parse(s: &str) -> Result<Self, MethodError> {
        match s {
            "process" => Ok(Method::Process),
            "docker" => Ok(Method::Docker),
            "auto" => Ok(Method::Auto),
            "systemd" => Ok(Method::Systemd),
            "swarm" => Ok(Method::Swarm),
            other => Err(MethodError::Unknown(other.to_string())),
        }
    }
}

impl<'de> Deserialize<'de> for Method {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Method::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// `deployer.toml`: deployer's own configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployerConfig {
    /// Where jobs, releases, logs and locks live. Default `./.deployer`.
    pub state_dir: Option<PathBuf>,
    /// Registry base URL; when absent, the Register phase is skipped.
    pub registry_url: Option<String>,
    /// Bearer token the registry wants (environment REGISTRY_TOKEN). Never
    /// printed.
    pub registry_token: Option<Secret>,
    /// A file of `NAME=value` lines that `--secret NAME` reads from when
    /// deployer's environment has no `NAME`. Keep it mode 0600.
    pub secrets_file: Option<PathBuf>,
    /// Port of `deployer serve` (seed: SERVICE_PORT, default 8007).
    pub serve_port: Option<u16>,
    #[serde(default)]
    pub target: TargetConfig,
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub api: ApiConfig,
    /// Where a finished job is announced (`[[notify]]`).
    #[serde(default)]
    pub notify: Vec<NotifyConfig>,
    #[serde(default)]
    pub git: GitConfig,
    /// `[[pipeline]]`: the stages `deployer pipeline run` runs first.
    #[serde(default)]
    pub pipeline: Vec<crate::integrations::stages::Stage>,
}

/// `[git]`: git-driven releases.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitConfig {
    /// The remote `--push` pushes to (default origin).
    pub remote: Option<String>,
    /// The branch a pre-receive hook deploys (default main).
    pub branch: Option<String>,
}

/// One place a finished job is announced.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// `webhook` (deployer's JSON), `slack` (an incoming webhook's
    /// `{"text"}`) or `telegram` (the Bot API's sendMessage).
    pub kind: NotifyKind,
    /// The webhook's URL; for telegram, the Bot API's base URL (default
    /// https://api.telegram.org).
    pub url: Option<String>,
    /// Telegram: the chat to write to.
    pub chat_id: Option<String>,
    /// Telegram: the name of the secret holding the bot's token (its value
    /// comes from deployer's environment or secrets file).
    pub token_secret: Option<String>,
    /// Which outcomes to announce: success, failure, rollback,
    /// rollback_failed (default: all).
    #[serde(default)]
    pub on: Vec<String>,
    /// Telegram: also post the job's whole report, phase by phase, once it
    /// is done (after Register).
    #[serde(default)]
    pub report: bool,
}

/// How a notification is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyKind {
    Webhook,
    Slack,
    Telegram,
}

/// `[api]`: `deployer serve`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address to listen on. Default 127.0.0.1.
    pub bind: Option<String>,
    /// Bearer token for mutating endpoints, at least 32 characters
    /// (environment DEPLOYER_API_TOKEN wins). Without one, `serve` makes
    /// one and keeps it in STATE_DIR/api-token.
    pub token: Option<Secret>,
    /// Require the token on reading endpoints too.
    #[serde(default)]
    pub read_requires_token: bool,
    /// Directories a deploy request's service_path must be inside.
    #[serde(default)]
    pub allowed_roots: Vec<PathBuf>,
    /// Deploy jobs run at once (default 4).
    pub workers: Option<usize>,
    /// Deploys and rollbacks accepted and not finished, at most (default 64).
    pub max_queued: Option<usize>,
    /// Host names the server answers to besides its addresses and localhost.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Secrets a deploy request may name whose values come from the
    /// server's environment (the secrets file's names are allowed too).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Back up every service each day at this time, UTC (`"03:00"`): the
    /// ops seed's daily snapshot.
    pub snapshot_at: Option<String>,
}

/// Where services are deployed. Only this machine (`local`) in this build.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// `local` (default) or a remote host (seed: SERVER_HOST).
    pub host: Option<String>,
    /// Remote user (seed: SERVER_USER).
    pub user: Option<String>,
    /// SSH private key for the remote host (seed: SSH_KEY_PATH).
    pub ssh_key: Option<PathBuf>,
    /// The address put in service URLs and registrations. Default: the
    /// host's address (127.0.0.1 for this machine).
    pub address: Option<String>,
    /// known_hosts file for host-key checks. Default ~/.ssh/known_hosts.
    pub known_hosts: Option<PathBuf>,
    /// The host's key, pinned (`ssh-ed25519 AAAA…`), checked instead of
    /// known_hosts.
    pub host_key: Option<String>,
    /// Record the host key of a host never seen before (first contact).
    /// A changed key is refused regardless.
    #[serde(default)]
    pub accept_new_host_key: bool,
    /// Where service directories live on a remote host. Default /srv/deployer.
    pub base_dir: Option<PathBuf>,
}

/// Defaults for every service, overridden by a manifest and by flags.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Seed: DEPLOYMENT_METHOD.
    pub method: Option<Method>,
    /// Docker network for containers (seed: DEFAULT_NETWORK).
    pub network: Option<String>,
    pub keep_releases: Option<usize>,
    /// Releases older than this many days are pruned too (never the
    /// current one or the one a rollback would bring back).
    pub keep_days: Option<u64>,
    pub health_timeout_secs: Option<u64>,
    pub health_retries: Option<u32>,
    pub stop_grace_secs: Option<u64>,
    /// A whole job's time limit (default 600, the seed's 10 minutes;
    /// seed: DEPLOYMENT_TIMEOUT).
    pub job_timeout_secs: Option<u64>,
}

impl DeployerConfig {
    /// Loads the file (when given) and then applies the seeds' environment
    /// variables on top of it.
    pub fn load(
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(p) => parse_toml::<DeployerConfig>(&read_file(p)?, &p.display().to_string())?,
            None => DeployerConfig::default(),
        };
        config.apply_env(env)?;
        Ok(config)
    }

    fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let nonempty = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        if let Some(v) = nonempty("DEPLOYER_STATE_DIR") {
            self.state_dir = Some(PathBuf::from(v));
        }
        if let Some(v) = nonempty("REGISTRY_URL") {
            self.registry_url = Some(v);
        }
        if let Some(v) = nonempty("REGISTRY_TOKEN") {
            self.registry_token = Some(Secret::new(v));
        }
        if let Some(v) = nonempty("SERVER_HOST") {
            self.target.host = Some(v);
        }
        if let Some(v) = nonempty("SERVER_USER") {
            self.target.user = Some(v);
        }
        if let Some(v) = nonempty("SSH_KEY_PATH") {
            // As the seed writes it: ~/.ssh/key.
            let home = env("HOME").or_else(|| std::env::var("HOME").ok());
            self.target.ssh_key = Some(match (v.strip_prefix("~/"), home) {
                (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
                _ => PathBuf::from(v),
            });
        }
        if let Some(v) = nonempty("DEFAULT_NETWORK") {
            self.defaults.network = Some(v);
        }
        if let Some(v) = nonempty("DEPLOYMENT_METHOD") {
            self.defaults.method = Some(
                Method::parse(&v)
                    .map_err(|m| ConfigError::new("environment", "DEPLOYMENT_METHOD", m))?,
            );
        }
        if let Some(v) = nonempty("DEPLOYMENT_TIMEOUT") {
            self.defaults.job_timeout_secs = Some(v.parse().map_err(|_| {
                ConfigError::new(
                    "environment",
                    "DEPLOYMENT_TIMEOUT",
                    format!("'{v}' is not a number of seconds"),
                )
            })?);
        }
        if let Some(v) = nonempty("SERVICE_PORT") {
            self.serve_port = Some(v.parse().map_err(|_| {
                ConfigError::new(
                    "environment",
                    "SERVICE_PORT",
                    format!("'{v}' is not a port number"),
                )
            })?);
        }
        Ok(())
    }
}

mod manifest;
pub use manifest::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_file_key_and_line() {
        let err = parse_toml::<Manifest>(
            "name = \"a\"\n\n[health]\ntimeout_secs = \"soon\"\n",
            "svc/service.toml",
        )
        .unwrap_err();
        assert_eq!(err.key_path, "health.timeout_secs");
        assert_eq!(err.line, Some(4));
        assert!(
            err.to_string()
                .starts_with("svc/service.toml:4: health.timeout_secs: "),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_is_an_error() {
        let err = parse_toml::<Manifest>("nmae = \"a\"\n", "service.toml").unwrap_err();
        assert!(err.message.contains("unknown field `nmae`"), "{err}");
        assert_eq!(err.line, Some(1));
    }

    #[test]
    fn syntax_error_has_line() {
        let err = parse_toml::<Manifest>("name = \"a\"\nport = \n", "service.toml").unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
    }

    #[test]
    fn unknown_method_is_named() {
        let err = parse_toml::<Manifest>("method = \"ftp\"\n", "service.toml").unwrap_err();
        assert_eq!(err.key_path, "method");
        assert!(
            err.message.contains("unknown deployment method 'ftp'"),
            "{err}"
        );
    }

    #[test]
    fn env_overrides_file() {
        let env = |k: &str| match k {
            "REGISTRY_URL" => Some("http://127.0.0.1:9".to_string()),
            "DEPLOYMENT_METHOD" => Some("docker".to_string()),
            _ => None,
        };
        let c = DeployerConfig::load(None, &env).unwrap();
        assert_eq!(c.registry_url.as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!(c.defaults.method, Some(Method::Docker));
        let bad = |k: &str| (k == "SERVICE_PORT").then(|| "eighty".to_string());
        let err = DeployerConfig::load(None, &bad).unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment: SERVICE_PORT: 'eighty' is not a port number"
        );
    }
}
