//! The second stage of input: a [`DeployRequest`] (from flags or the HTTP
//! API's body) plus the manifest and deployer's config become a [`Plan`], pure
//! data that the engine runs. Everything that can be checked without touching
//! the target is checked here, so bad input fails before anything is written.

mod address;
mod checks;
mod secrets;
mod swarm;

pub use address::{address_for, is_local_host, service_address};
pub use checks::job_timeout;
use checks::{
    backup_spec, limits, proxy_spec, python_service, service_name, service_port, smoke_checks,
    systemd_user,
};

pub use secrets::{check_requested_secrets, listed_secrets_only, resolve_secrets};

use crate::input::config::{DeployerConfig, Manifest, Method};
use crate::model::{HealthSpec, RunSpec, RuntimeKind};
use crate::support::error::Failure;
use crate::support::secret::{Redactor, Secret};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The longest health check deployer waits for (a day): longer is a typo,
/// and would overflow a deadline.
pub const MAX_HEALTH_TIMEOUT_SECS: u64 = 86_400;

/// The longest a stopping release is given before it is killed (an hour).
pub const MAX_STOP_GRACE_SECS: u64 = 3_600;

/// Environment variables deployer sets itself; a service may not override them.
pub const RESERVED_ENV: [&str; 3] = ["PORT", "SERVICE_NAME", "RELEASE"];

/// What the user asked for: the spec's `DeployRequest`, every field optional
/// where a manifest can supply it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeployRequest {
    /// The service directory, inside one of the server's allowed roots.
    #[schema(value_type = String)]
    pub service_path: PathBuf,
    pub service_name: Option<String>,
    pub droplet_id: Option<i64>,
    pub service_port: Option<u16>,
    pub deployment_method: Option<String>,
    #[serde(default)]
    pub environment_vars: BTreeMap<String, String>,
    /// `None` means "register when a registry is configured".
    pub auto_register: Option<bool>,
    pub start: Option<String>,
    pub build: Option<String>,
    pub health_path: Option<String>,
    /// Names of secrets; their values never travel in a request.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Do not run the service's `[tests]` (recorded in the audit log).
    #[serde(default)]
    pub skip_tests: Option<bool>,
    /// Serve the service through deployer's reverse proxy on this public
    /// port (`[proxy] port`): each release gets a private port, and a
    /// redeploy switches the proxy without a gap.
    #[serde(default)]
    pub proxy_port: Option<u16>,
    /// For the swarm method: how many tasks run (`[swarm] replicas`).
    #[serde(default)]
    pub replicas: Option<u32>,
    /// Deploy the commit this names (a branch, tag or sha) of the git
    /// repository at `service_path`, instead of the directory as it is:
    /// the release is exactly that commit's tree, and the job records it.
    #[serde(default)]
    pub git_ref: Option<String>,
}

impl DeployRequest {
    /// Points the request at a commit's exported tree; what the plan keeps
    /// of where it came from. Without a name given or in the manifest, the
    /// service is named after its own directory (the export's is made up).
    pub fn from_commit(&mut self, exported: &crate::integrations::git::Exported) -> GitSource {
        let dir = std::path::absolute(&self.service_path).unwrap_or(self.service_path.clone());
        let named = crate::input::config::Manifest::load_from_dir(exported.path())
            .ok()
            .flatten()
            .is_some_and(|m| m.name.is_some());
        if self.service_name.is_none() && !named {
            self.service_name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
        }
        self.service_path = exported.path().to_path_buf();
        GitSource {
            commit: exported.commit.clone(),
            path: dir,
        }
    }
}

/// How a deploy to several hosts rolls out: a canary wave first, then the
/// rest in waves of at most `parallel` hosts at once.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutSpec {
    /// Hosts in the first wave (0: no canary wave).
    pub canary: usize,
    /// Hosts deployed at once in each later wave.
    pub parallel: usize,
    /// When a wave fails, also roll back the hosts earlier waves switched.
    pub rollback_switched: bool,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        RolloutSpec {
            canary: 1,
            parallel: 4,
            rollback_switched: false,
        }
    }
}

impl RolloutSpec {
    /// Host indexes per wave, in order.
    pub fn waves(&self, hosts: usize) -> Vec<Vec<usize>> {
        let mut waves = Vec::new();
        let canary = self.canary.min(hosts);
        if canary > 0 {
            waves.push((0..canary).collect());
        }
        let rest: Vec<usize> = (canary..hosts).collect();
        for chunk in rest.chunks(self.parallel.max(1)) {
            waves.push(chunk.to_vec());
        }
        waves
    }
}

/// Whether and where the Register phase registers the service.
#[derive(Clone, Debug, PartialEq)]
pub enum RegisterPlan {
    Skip {
        reason: String,
    },
    To {
        registry_url: String,
        droplet_id: i64,
    },
}

/// A validated deploy: everything the engine needs, nothing it must check.
#[derive(Clone, Debug)]
pub struct Plan {
    pub service_name: String,
    /// The service directory, absolute.
    pub source: PathBuf,
    pub droplet_id: Option<i64>,
    pub method: Method,
    pub spec: RunSpec,
    pub secrets: Vec<(String, Secret)>,
    pub keep_releases: usize,
    /// Releases older than this many days are pruned too.
    pub keep_days: Option<u64>,
    pub register: RegisterPlan,
    /// The address in the service URL and the registration.
    pub address: String,
    /// Hosts the manifest lists (`hosts = [...]`); flags and config may
    /// name others.
    pub hosts: Vec<String>,
    pub rollout: RolloutSpec,
    pub tests: TestsPlan,
    /// Requests the new release must answer as expected after its health
    /// check.
    pub smoke: Vec<crate::input::config::SmokeCheck>,
    /// The migration command, run against the new release before the old
    /// one stops.
    pub migrate: Option<String>,
    /// The whole job's time limit.
    pub timeout: std::time::Duration,
    /// Set for a git-driven release: its commit, and the service directory
    /// in the work tree (`source` is the commit's exported tree).
    pub git: Option<GitSource>,
    /// Set by `deployer pipeline run` (and `POST /pipeline`): the stages
    /// that run before the deploy.
    pub pipeline: Option<crate::integrations::stages::Pipeline>,
}

/// Where a git-driven release comes from.
#[derive(Clone, Debug)]
pub struct GitSource {
    pub commit: crate::model::CommitInfo,
    pub path: PathBuf,
}

/// Tests a deploy runs before its release may start.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TestsPlan {
    /// On this machine, in the service directory, before Transfer.
    pub local: Option<String>,
    /// On each target, in the new release, after Build.
    pub server: Option<String>,
    /// `--skip-tests`: not run (audited).
    pub skipped: bool,
}

impl Plan {
    pub fn service_url(&self) -> String {
        format!("http://{}:{}", self.address, self.spec.public_port())
    }

    /// Sets the pipeline a `pipeline run` runs first: the manifest's
    /// stages, else deployer.toml's, with their tokens resolved.
    pub fn with_pipeline(
        mut self,
        intent: Option<String>,
        config: &DeployerConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Plan, Failure> {
        let manifest = Manifest::load_from_dir(&self.source)?.unwrap_or_default();
        let mut p = crate::integrations::stages::Pipeline::configured(
            &manifest.pipeline,
            &config.pipeline,
            intent,
        )?;
        p.tokens = resolve_secrets(&p.token_names(), config, env)?
            .into_iter()
            .collect();
        self.pipeline = Some(p);
        Ok(self)
    }

    pub fn redactor(&self) -> Redactor {
        Redactor::for_job(self.secrets.iter().map(|(_, v)| v), self.spec.env.values())
    }

    /// Builds a plan. `env` reads deployer's own environment (for secrets).
    pub fn build(
        req: &DeployRequest,
        config: &DeployerConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Plan, Failure> {
        let source = source_dir(&req.service_path)?;
        let manifest = Manifest::load_from_dir(&source)?.unwrap_or_default();
        let service_name = service_name(req, &manifest, &source)?;
        let method = match req.deployment_method.as_deref() {
            Some(m) => {
                Method::parse(m).map_err(|e| Failure::invalid_field("deployment_method", e))?
            }
            None => manifest
                .method
                .or(config.defaults.method)
                .unwrap_or(Method::Process),
        };
        let keep_releases = manifest
            .keep_releases
            .or(config.defaults.keep_releases)
            .unwrap_or(5);
        if keep_releases == 0 {
            return Err(Failure::invalid("keep_releases must be at least 1"));
        }
        let droplet_id = req.droplet_id.or(manifest.droplet_id);
        let (mut spec, secrets) = run_spec(req, &manifest, config, method, env)?;
        python_service(&source, &manifest, method, &mut spec)?;
        spec.proxy = proxy_spec(req, &manifest)?;
        spec.swarm = swarm::swarm_spec(req.replicas, &manifest, method)?;
        if spec.swarm.is_some() && spec.proxy.is_some() {
            return Err(Failure::invalid(
                "[proxy] is not for the swarm method: its tasks are published with [swarm] publish",
            ));
        }
        Ok(Plan {
            service_name,
            source,
            droplet_id,
            method,
            spec,
            secrets,
            keep_releases,
            keep_days: manifest.keep_days.or(config.defaults.keep_days),
            register: register_plan(req.auto_register, config, droplet_id)?,
            address: address_for(config, &manifest.hosts),
            hosts: manifest.hosts.clone(),
            rollout: RolloutSpec {
                canary: manifest.rollout.canary.unwrap_or(1),
                parallel: manifest.rollout.parallel.unwrap_or(4),
                rollback_switched: manifest.rollout.rollback_switched.unwrap_or(false),
            },
            tests: TestsPlan {
                local: manifest.tests.local.clone(),
                server: manifest.tests.server.clone(),
                skipped: req.skip_tests.unwrap_or(false),
            },
            smoke: smoke_checks(&manifest)?,
            migrate: manifest.migrate.clone(),
            timeout: job_timeout(Some(&manifest), config)?,
            git: None,
            pipeline: None,
        })
    }
}

/// The service directory: it must exist and be a directory; made absolute.
fn source_dir(path: &Path) -> Result<PathBuf, Failure> {
    let refuse = |msg: String| Failure::invalid_field("service_path", msg);
    if path.as_os_str().is_empty() {
        return Err(refuse("service path is empty".into()));
    }
    if !path.exists() {
        return Err(refuse(format!(
            "service path {} does not exist",
            path.display()
        )));
    }
    if !path.is_dir() {
        return Err(refuse(format!(
            "service path {} is not a directory",
            path.display()
        )));
    }
    path.canonicalize()
        .map_err(|e| refuse(format!("service path {}: {e}", path.display())))
}

/// How the release runs, and the secrets it names (resolved).
fn run_spec(
    req: &DeployRequest,
    manifest: &Manifest,
    config: &DeployerConfig,
    method: Method,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(RunSpec, Vec<(String, Secret)>), Failure> {
    // Behind the proxy, `port` is a placeholder until Validation picks the
    // release's private port.
    let proxied = req
        .proxy_port
        .or(manifest.proxy.as_ref().and_then(|p| p.port));
    let (port, container_port) = service_port(req.service_port.or(proxied), manifest)?;
    let (env_vars, secret_names) = env_and_secret_names(req, manifest)?;
    let secrets = resolve_secrets(&secret_names, config, env)?;
    let dockerfile = manifest
        .dockerfile
        .clone()
        .unwrap_or_else(|| "Dockerfile".to_string());
    if Path::new(&dockerfile).is_absolute() || dockerfile.split('/').any(|c| c == "..") {
        return Err(Failure::invalid(format!(
            "dockerfile '{dockerfile}' must be a path inside the service directory"
        )));
    }
    let stop_grace_secs = manifest
        .stop_grace_secs
        .or(config.defaults.stop_grace_secs)
        .unwrap_or(10);
    if stop_grace_secs > MAX_STOP_GRACE_SECS {
        return Err(Failure::invalid(format!(
            "stop_grace_secs {stop_grace_secs} is too long (at most {MAX_STOP_GRACE_SECS})"
        )));
    }
    let spec = RunSpec {
        // Resolved by the engine's Validation phase for `auto`.
        runtime: match method {
            Method::Docker => RuntimeKind::Docker,
            Method::Systemd => RuntimeKind::Systemd,
            Method::Swarm => RuntimeKind::Swarm,
            _ => RuntimeKind::Process,
        },
        port,
        build: req.build.clone().or(manifest.build.clone()),
        start: req.start.clone().or(manifest.start.clone()),
        dockerfile,
        env: env_vars,
        secret_names,
        health: health_spec(req, manifest, config)?,
        network: manifest
            .docker
            .network
            .clone()
            .or(config.defaults.network.clone()),
        restart: manifest
            .docker
            .restart
            .clone()
            .unwrap_or_else(|| "unless-stopped".to_string()),
        stop_grace_secs,
        user: systemd_user(manifest)?,
        backup: backup_spec(manifest)?,
        limits: limits(manifest)?,
        container_port,
        python: None,
        // Set by `proxy_spec`; `port` is then replaced in Validation.
        proxy: None,
        swarm: None,
    };
    Ok((spec, secrets))
}

/// The service's environment (manifest, then request) and the names of
/// its secrets; a name may not be both.
fn env_and_secret_names(
    req: &DeployRequest,
    manifest: &Manifest,
) -> Result<(BTreeMap<String, String>, Vec<String>), Failure> {
    let mut env_vars = manifest.env.clone();
    env_vars.extend(req.environment_vars.clone());
    for key in env_vars.keys() {
        validate_env_name(key).map_err(|f| Failure {
            field: Some("environment_vars"),
            ..f
        })?;
    }
    let mut secret_names = manifest.secrets.clone();
    for s in &req.secrets {
        if !secret_names.contains(s) {
            secret_names.push(s.clone());
        }
    }
    if let Some(name) = secret_names.iter().find(|n| env_vars.contains_key(*n)) {
        return Err(Failure::invalid(format!(
            "'{name}' is both an environment variable and a secret; keep it in one place"
        )));
    }
    Ok((env_vars, secret_names))
}

fn health_spec(
    req: &DeployRequest,
    manifest: &Manifest,
    config: &DeployerConfig,
) -> Result<HealthSpec, Failure> {
    let path = req
        .health_path
        .clone()
        .or(manifest.health.path.clone())
        .unwrap_or_else(|| "/health".to_string());
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace()) {
        return Err(Failure::invalid_field(
            "health_path",
            format!("health path '{path}' must start with '/' and contain no spaces"),
        ));
    }
    let timeout_secs = manifest
        .health
        .timeout_secs
        .or(config.defaults.health_timeout_secs)
        .unwrap_or(30);
    if timeout_secs > MAX_HEALTH_TIMEOUT_SECS {
        return Err(Failure::invalid(format!(
            "health timeout_secs {timeout_secs} is too long (at most {MAX_HEALTH_TIMEOUT_SECS})"
        )));
    }
    Ok(HealthSpec {
        path,
        timeout_secs,
        retries: manifest
            .health
            .retries
            .or(config.defaults.health_retries)
            .unwrap_or(3),
        from_target: manifest.health.from == Some(crate::input::config::HealthFrom::Target),
    })
}

/// Whether and where Register registers: off by request, skipped without a
/// registry, refused when a registry has no droplet id to use.
fn register_plan(
    auto_register: Option<bool>,
    config: &DeployerConfig,
    droplet_id: Option<i64>,
) -> Result<RegisterPlan, Failure> {
    Ok(match (auto_register, &config.registry_url, droplet_id) {
        (Some(false), _, _) => RegisterPlan::Skip {
            reason: "registration turned off (--no-register)".to_string(),
        },
        (_, None, _) => RegisterPlan::Skip {
            reason: "no registry configured (registry_url / REGISTRY_URL)".to_string(),
        },
        (_, Some(_), None) => {
            return Err(Failure::invalid_field(
                "droplet_id",
                "a registry is configured but the service has no droplet_id: give --droplet-id, \
                 set `droplet_id` in service.toml, or pass --no-register",
            ));
        }
        (_, Some(url), Some(id)) => RegisterPlan::To {
            registry_url: url.trim_end_matches('/').to_string(),
            droplet_id: id,
        },
    })
}

/// Service names become directory names, image names and container names,
/// so only lowercase letters, digits, `-` and `_` are allowed.
pub fn validate_name(name: &str) -> Result<(), Failure> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(Failure::invalid_field(
            "service_name",
            format!(
                "invalid service name '{}': use 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit",
                name.escape_default()
            ),
        ))
    }
}

pub(crate) fn validate_env_name(key: &str) -> Result<(), Failure> {
    let valid = !key.is_empty()
        && !key.as_bytes()[0].is_ascii_digit()
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        return Err(Failure::invalid(format!(
            "invalid environment variable name '{}'",
            key.escape_default()
        )));
    }
    if RESERVED_ENV.contains(&key) {
        return Err(Failure::invalid(format!(
            "environment variable {key} is set by deployer itself and cannot be overridden"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_start_with_the_canary() {
        let r = RolloutSpec {
            canary: 1,
            parallel: 2,
            rollback_switched: false,
        };
        assert_eq!(r.waves(5), vec![vec![0], vec![1, 2], vec![3, 4]]);
        assert_eq!(r.waves(1), vec![vec![0]]);
        let no_canary = RolloutSpec {
            canary: 0,
            parallel: 3,
            rollback_switched: false,
        };
        assert_eq!(no_canary.waves(3), vec![vec![0, 1, 2]]);
    }

    #[test]
    fn names() {
        for good in ["hello", "i-proactive", "a_1", "9lives"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "../etc",
            "a/b",
            "Hello",
            "-x",
            "a b",
            ".",
            "x".repeat(64).as_str(),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reserved_env_is_refused() {
        assert!(
            validate_env_name("PORT")
                .unwrap_err()
                .message
                .contains("set by deployer")
        );
        assert!(validate_env_name("1A").is_err());
        assert!(validate_env_name("API_KEY").is_ok());
    }

    #[test]
    fn missing_secret_names_the_secret() {
        let err = resolve_secrets(&["API_KEY".into()], &DeployerConfig::default(), &|_| None)
            .unwrap_err();
        assert!(
            err.message.contains("secret API_KEY has no value"),
            "{}",
            err.message
        );
    }
}
