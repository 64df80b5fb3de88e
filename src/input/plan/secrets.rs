//! Secrets: their values come from deployer's environment or its secrets
//! file, never from a request or a flag; the HTTP API may hand out only the
//! names its config lists.

use super::validate_env_name;
use crate::input::config::DeployerConfig;
use crate::support::error::Failure;
use crate::support::secret::Secret;
use std::collections::BTreeMap;
use std::path::Path;

/// Finds each secret's value in deployer's environment, then in the secrets
/// file. A missing value is an error that names the secret, never a value.
pub fn resolve_secrets(
    names: &[String],
    config: &DeployerConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, Secret)>, Failure> {
    let mut file_values: Option<BTreeMap<String, String>> = None;
    let mut out = Vec::new();
    for name in names {
        validate_env_name(name)?;
        let value = match env(name) {
            Some(v) => Some(v),
            None => {
                if file_values.is_none()
                    && let Some(path) = &config.secrets_file
                {
                    file_values = Some(read_secrets_file(path)?);
                }
                file_values.as_ref().and_then(|m| m.get(name).cloned())
            }
        };
        match value {
            Some(v) => out.push((name.clone(), Secret::new(v))),
            None => {
                return Err(Failure::invalid(format!(
                    "secret {name} has no value: set {name} in deployer's environment{}",
                    match &config.secrets_file {
                        Some(p) => format!(" or in the secrets file {}", p.display()),
                        None => " or configure a secrets_file".to_string(),
                    }
                )));
            }
        }
    }
    Ok(out)
}

/// Where the HTTP API may take a secret's value from: the environment only
/// for names `[api] secrets` lists, and the secrets file. A request cannot
/// pull any other variable of the server's environment (cloud credentials,
/// deployer's own tokens) into its service.
pub fn listed_secrets_only<'a>(config: &'a DeployerConfig) -> impl Fn(&str) -> Option<String> + 'a {
    move |name| {
        config
            .api
            .secrets
            .iter()
            .any(|s| s == name)
            .then(|| std::env::var(name).ok())
            .flatten()
    }
}

/// Refuses a request's secret names that the server does not hand out.
pub fn check_requested_secrets(names: &[String], config: &DeployerConfig) -> Result<(), Failure> {
    let file = match &config.secrets_file {
        Some(path) => read_secrets_file(path)?,
        None => BTreeMap::new(),
    };
    for name in names {
        validate_env_name(name).map_err(|f| Failure {
            field: Some("secrets"),
            ..f
        })?;
        if !config.api.secrets.contains(name) && !file.contains_key(name) {
            return Err(Failure::invalid_field(
                "secrets",
                format!(
                    "secret {name} is not one this server hands out: list it in [api] secrets \
                     in deployer.toml, or put it in the secrets file"
                ),
            ));
        }
    }
    Ok(())
}

fn read_secrets_file(path: &Path) -> Result<BTreeMap<String, String>, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::invalid(format!("cannot read secrets file {}: {e}", path.display()))
    })?;
    let mut map = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            // Never echo the line: it may hold a value.
            return Err(Failure::invalid(format!(
                "{}:{}: expected NAME=value",
                path.display(),
                i + 1
            )));
        };
        map.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(map)
}
