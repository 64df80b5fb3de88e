//! The address a service is reached at, for its URL and registration.

use crate::input::config::DeployerConfig;

/// The address in service URLs: `target.address`, else the remote host's
/// own address, else 127.0.0.1.
pub fn service_address(config: &DeployerConfig) -> String {
    if let Some(a) = &config.target.address {
        return a.clone();
    }
    match config.target.host.as_deref() {
        Some(h) if !is_local_host(h) => crate::hosting::ssh::SshTarget::parse_address(h)
            .map(|(_, host, _)| host)
            .unwrap_or_else(|_| h.to_string()),
        _ => "127.0.0.1".to_string(),
    }
}

/// The address in service URLs for a deploy to `hosts` (`--host` flags or
/// the manifest's list): `target.address`, else the one remote host's own
/// address, else as [`service_address`] (several hosts: the config's).
pub fn address_for(config: &DeployerConfig, hosts: &[String]) -> String {
    match hosts {
        [h] if config.target.address.is_none() && !is_local_host(h) => {
            crate::hosting::ssh::SshTarget::parse_address(h)
                .map(|(_, host, _)| host)
                .unwrap_or_else(|_| service_address(config))
        }
        _ => service_address(config),
    }
}

/// Whether a target host names this machine (deployed without SSH).
pub fn is_local_host(h: &str) -> bool {
    matches!(h, "local" | "localhost")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deploy_to_one_named_server_is_reached_at_that_server() {
        let mut config = DeployerConfig::default();
        let one = ["root@10.0.0.7:2222".to_string()];
        assert_eq!(address_for(&config, &one), "10.0.0.7");
        assert_eq!(address_for(&config, &[]), "127.0.0.1");
        assert_eq!(address_for(&config, &["local".to_string()]), "127.0.0.1");
        let two = ["10.0.0.7".to_string(), "10.0.0.8".to_string()];
        assert_eq!(address_for(&config, &two), "127.0.0.1");
        config.target.host = Some("deploy@10.0.0.9".into());
        assert_eq!(address_for(&config, &[]), "10.0.0.9");
        assert_eq!(address_for(&config, &one), "10.0.0.7");
        config.target.address = Some("app.example".into());
        assert_eq!(address_for(&config, &one), "app.example");
    }
}
