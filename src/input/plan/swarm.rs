//! `[swarm]` and `--replicas` become a [`SwarmSpec`], checked here so a
//! bad constraint or registry fails before anything reaches the manager.

use crate::input::config::{Manifest, Method};
use crate::model::{SwarmPublish, SwarmSpec};
use crate::support::error::Failure;

/// The most tasks deployer will ask a swarm for: more is a typo.
pub const MAX_REPLICAS: u32 = 1_000;

/// The swarm spec for the swarm method; `[swarm]` or `--replicas` with
/// another method is refused, so nothing is silently ignored.
pub(super) fn swarm_spec(
    replicas: Option<u32>,
    manifest: &Manifest,
    method: Method,
) -> Result<Option<SwarmSpec>, Failure> {
    let config = &manifest.swarm;
    if method != Method::Swarm {
        if replicas.is_some() {
            return Err(Failure::invalid_field(
                "replicas",
                format!(
                    "--replicas is for the swarm method (this deploy uses {})",
                    method.as_str()
                ),
            ));
        }
        return Ok(None);
    }
    let replicas = replicas.or(config.replicas).unwrap_or(1);
    if replicas == 0 || replicas > MAX_REPLICAS {
        return Err(Failure::invalid_field(
            "replicas",
            format!("replicas {replicas} must be between 1 and {MAX_REPLICAS}"),
        ));
    }
    let network = config.network.clone().unwrap_or_else(|| "deployer".into());
    if !plain_name(&network) {
        return Err(Failure::invalid(format!(
            "swarm.network '{network}' may hold only letters, digits, '-', '_' and '.'"
        )));
    }
    if let Some(r) = &config.registry
        && !registry_ok(r)
    {
        return Err(Failure::invalid(format!(
            "swarm.registry '{r}' must be a registry address, as \"10.0.0.1:5000\" or \"registry.example.com\""
        )));
    }
    let publish = match config.publish.as_deref() {
        None | Some("proxy") => SwarmPublish::Proxy,
        Some("mesh") => SwarmPublish::Mesh,
        Some(other) => {
            return Err(Failure::invalid(format!(
                "swarm.publish '{other}' must be \"proxy\" or \"mesh\""
            )));
        }
    };
    for c in &config.constraints {
        constraint_ok(c)?;
    }
    let update_parallelism = config.update_parallelism.unwrap_or(1);
    if update_parallelism == 0 {
        return Err(Failure::invalid(
            "swarm.update_parallelism must be at least 1",
        ));
    }
    let (update_delay_secs, update_monitor_secs) = (
        config.update_delay_secs.unwrap_or(0),
        config.update_monitor_secs.unwrap_or(5),
    );
    if update_delay_secs > 3_600 || update_monitor_secs > 3_600 {
        return Err(Failure::invalid(
            "swarm.update_delay_secs and update_monitor_secs are at most 3600",
        ));
    }
    Ok(Some(SwarmSpec {
        replicas,
        registry: config.registry.clone(),
        network,
        publish,
        constraints: config.constraints.clone(),
        update_parallelism,
        update_delay_secs,
        update_monitor_secs,
    }))
}

fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A registry host with an optional port and path ("host:5000/team").
fn registry_ok(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 200
        && !r.starts_with(['/', '-', '.'])
        && !r.ends_with('/')
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/'))
}

/// `KEY==VALUE` or `KEY!=VALUE`, as Swarm takes them.
fn constraint_ok(c: &str) -> Result<(), Failure> {
    let bad = || {
        Failure::invalid(format!(
            "swarm constraint '{c}' must be KEY==VALUE or KEY!=VALUE, as \"node.role==worker\""
        ))
    };
    let (key, value) = c
        .split_once("==")
        .or_else(|| c.split_once("!="))
        .ok_or_else(bad)?;
    let word = |s: &str| {
        !s.trim().is_empty()
            && s.trim()
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.' | '/' | ':'))
    };
    if word(key) && word(value) {
        Ok(())
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::config::SwarmConfig;

    fn manifest(swarm: SwarmConfig) -> Manifest {
        Manifest {
            swarm,
            ..Manifest::default()
        }
    }

    #[test]
    fn defaults_and_flag_over_manifest() {
        let m = manifest(SwarmConfig {
            replicas: Some(2),
            ..SwarmConfig::default()
        });
        let s = swarm_spec(None, &m, Method::Swarm).unwrap().unwrap();
        assert_eq!((s.replicas, s.network.as_str()), (2, "deployer"));
        assert_eq!(s.publish, SwarmPublish::Proxy);
        assert_eq!((s.update_parallelism, s.update_monitor_secs), (1, 5));
        let s = swarm_spec(Some(3), &m, Method::Swarm).unwrap().unwrap();
        assert_eq!(s.replicas, 3);
        assert!(swarm_spec(None, &m, Method::Docker).unwrap().is_none());
    }

    #[test]
    fn bad_input_names_the_problem() {
        let refused = |replicas, swarm, method| {
            swarm_spec(replicas, &manifest(swarm), method)
                .unwrap_err()
                .message
        };
        assert!(refused(Some(0), SwarmConfig::default(), Method::Swarm).contains("replicas 0"));
        assert!(refused(Some(2), SwarmConfig::default(), Method::Docker).contains("swarm method"));
        for c in ["node.role=worker", "==x", "node.role==a b", "a==$(x)"] {
            let swarm = SwarmConfig {
                constraints: vec![c.into()],
                ..SwarmConfig::default()
            };
            assert!(
                refused(None, swarm, Method::Swarm).contains("KEY==VALUE"),
                "{c}"
            );
        }
        let swarm = SwarmConfig {
            registry: Some("reg;rm -rf".into()),
            ..SwarmConfig::default()
        };
        assert!(refused(None, swarm, Method::Swarm).contains("registry address"));
        let swarm = SwarmConfig {
            publish: Some("ingress".into()),
            ..SwarmConfig::default()
        };
        assert!(refused(None, swarm, Method::Swarm).contains("\"proxy\" or \"mesh\""));
    }
}
