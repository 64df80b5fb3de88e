//! `deployer monitor`: the seed's server health monitor. Every service with
//! a current release, on each of its hosts (✓/✗, port, response time,
//! release, since when), each host's CPU, memory and disk (from /proc and
//! df, here and over SSH alike), and the registry.

use super::Engine;
use super::lifecycle::CheckLine;
use crate::hosting::site::{Site, TargetSpec};
use crate::support::cmd::Cmd;
use crate::support::error::Failure;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// One look at everything.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    #[serde(serialize_with = "crate::model::time_format::ser")]
    pub at: DateTime<Utc>,
    pub registry: RegistryLine,
    pub services: Vec<ServiceLine>,
    pub hosts: Vec<HostLine>,
    /// Every service healthy, every host reachable.
    pub healthy: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct RegistryLine {
    /// The configured registry (`registry_url`), if any.
    pub url: Option<String>,
    /// Whether it answered `GET /health`.
    pub reachable: Option<bool>,
    pub ms: Option<u128>,
    /// Services registered in this deployer's own registry.
    pub registered: usize,
}

/// A service on one host.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceLine {
    pub service: String,
    pub port: Option<u16>,
    /// When the current release was made.
    #[serde(serialize_with = "crate::model::time_format::ser_opt")]
    pub since: Option<DateTime<Utc>>,
    #[serde(flatten)]
    pub check: CheckLine,
}

/// A host's resources.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HostLine {
    pub host: String,
    pub cpu_percent: Option<f64>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub disk_used_bytes: Option<u64>,
    pub disk_total_bytes: Option<u64>,
    /// Why the host could not be read.
    pub error: Option<String>,
}

/// CPU over a quarter second, memory, and the disk holding the services.
const STATS_SCRIPT: &str = "head -1 /proc/stat; sleep 0.25; head -1 /proc/stat; \
     grep -E '^(MemTotal|MemAvailable):' /proc/meminfo; \
     d=\"$1\"; [ -d \"$d\" ] || d=/; df -Pk \"$d\" | tail -1";

impl Engine {
    /// Looks at every service with a current release and at its hosts,
    /// each host at once.
    pub async fn monitor(&self) -> Result<Snapshot, Failure> {
        let store = self.existing_store().await.ok();
        let services = match store {
            Some(s) => s.current_services().await?,
            None => Vec::new(),
        };
        let mut hosts: BTreeMap<String, (TargetSpec, Vec<String>)> = BTreeMap::new();
        // The configured hosts, even with nothing on them; this machine
        // only when named, or when there is nothing else to show.
        for t in self.targets.iter().filter(|t| self.pinned || !t.is_local()) {
            hosts.entry(t.name()).or_insert((t.clone(), Vec::new()));
        }
        for service in &services {
            for t in self.service_targets(service).await? {
                let entry = hosts.entry(t.name()).or_insert((t, Vec::new()));
                entry.1.push(service.clone());
            }
        }
        if hosts.is_empty() {
            hosts.insert("local".into(), (TargetSpec::Local, Vec::new()));
        }
        let looks = hosts
            .into_iter()
            .map(|(name, (target, services))| self.look_at_host(name, target, services));
        let results = futures_util::future::join_all(looks).await;
        let mut snapshot = Snapshot {
            at: Utc::now(),
            registry: self.registry_line().await,
            services: Vec::new(),
            hosts: Vec::new(),
            healthy: true,
        };
        for (host, lines) in results {
            snapshot.healthy &= host.error.is_none();
            snapshot.hosts.push(host);
            snapshot.services.extend(lines);
        }
        snapshot.healthy &= snapshot.services.iter().all(|s| s.check.healthy);
        snapshot
            .services
            .sort_by(|a, b| (&a.service, &a.check.host).cmp(&(&b.service, &b.check.host)));
        Ok(snapshot)
    }

    async fn look_at_host(
        &self,
        name: String,
        target: TargetSpec,
        services: Vec<String>,
    ) -> (HostLine, Vec<ServiceLine>) {
        let site = match Site::connect(&target, &self.state_dir).await {
            Ok(site) => site,
            Err(f) => {
                let lines = services
                    .into_iter()
                    .map(|service| ServiceLine {
                        service,
                        port: None,
                        since: None,
                        check: CheckLine {
                            host: name.clone(),
                            release: None,
                            healthy: false,
                            ms: None,
                            details: "host unreachable".into(),
                            replicas: None,
                        },
                    })
                    .collect();
                let host = HostLine {
                    host: name,
                    error: Some(f.message),
                    ..Default::default()
                };
                return (host, lines);
            }
        };
        let checks = services.iter().map(|s| self.service_line(&site, s));
        let (host, lines) = tokio::join!(host_stats(&site), futures_util::future::join_all(checks));
        site.close().await;
        (host, lines)
    }

    async fn service_line(&self, site: &Site, service: &str) -> ServiceLine {
        let check = self.check_on(site, service).await;
        let release = match (&check.release, self.store().await) {
            (Some(id), Ok(store)) => store
                .releases(service)
                .await
                .ok()
                .and_then(|rs| rs.into_iter().find(|r| &r.id == id)),
            _ => None,
        };
        ServiceLine {
            service: service.to_string(),
            port: release.as_ref().map(|r| r.spec.public_port()),
            since: release.map(|r| r.created_at),
            check,
        }
    }

    async fn registry_line(&self) -> RegistryLine {
        let registered = match self.existing_store().await {
            Ok(s) => s.registry().await.map(|r| r.len()).unwrap_or(0),
            Err(_) => 0,
        };
        let Some(url) = self.config.registry_url.clone() else {
            return RegistryLine {
                url: None,
                reachable: None,
                ms: None,
                registered,
            };
        };
        let started = std::time::Instant::now();
        let answer = self
            .http
            .get(format!("{}/health", url.trim_end_matches('/')))
            .timeout(Duration::from_secs(3))
            .send()
            .await;
        let reachable = answer.is_ok_and(|r| !r.status().is_server_error());
        RegistryLine {
            url: Some(url),
            reachable: Some(reachable),
            ms: reachable.then(|| started.elapsed().as_millis()),
            registered,
        }
    }
}

async fn host_stats(site: &Site) -> HostLine {
    let name = site.host.name();
    let cmd = Cmd::new("sh")
        .args(["-c", STATS_SCRIPT, "stats"])
        .arg(site.root().to_string_lossy());
    match site.host.run(&cmd, Duration::from_secs(10)).await {
        Ok(out) => parse_stats(name, &out.stdout),
        Err(e) => HostLine {
            host: name,
            error: Some(e.to_string()),
            ..Default::default()
        },
    }
}

/// Reads the stats script's output: two `cpu` lines of /proc/stat, two
/// /proc/meminfo lines, a `df -Pk` line.
fn parse_stats(host: String, out: &str) -> HostLine {
    let cpu: Vec<Vec<u64>> = out
        .lines()
        .filter(|l| l.starts_with("cpu "))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .collect();
    let cpu_percent = match cpu.as_slice() {
        [a, b] if a.len() >= 5 && b.len() >= 5 => {
            let total = b.iter().sum::<u64>().saturating_sub(a.iter().sum());
            let idle = (b[3] + b[4]).saturating_sub(a[3] + a[4]);
            (total > 0).then(|| 100.0 * (total - idle.min(total)) as f64 / total as f64)
        }
        _ => None,
    };
    let kb = |key: &str| {
        out.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<u64>().ok())
            .map(|n| n * 1024)
    };
    let (mem_total, mem_available) = (kb("MemTotal:"), kb("MemAvailable:"));
    let df: Vec<u64> = out
        .lines()
        .last()
        .filter(|l| l.starts_with('/') || l.contains('%'))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .take(2)
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    HostLine {
        host,
        cpu_percent,
        memory_used_bytes: mem_total
            .zip(mem_available)
            .map(|(t, a)| t.saturating_sub(a)),
        memory_total_bytes: mem_total,
        disk_used_bytes: df.get(1).map(|n| n * 1024),
        disk_total_bytes: df.first().map(|n| n * 1024),
        error: None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn stats_are_read_from_proc_and_df() {
        let out = "cpu  100 0 100 700 100 0 0 0 0 0\n\
                   cpu  150 0 150 750 150 0 0 0 0 0\n\
                   MemTotal:        4000000 kB\n\
                   MemAvailable:    1000000 kB\n\
                   /dev/sda1  50000000 12000000 38000000  24% /\n";
        let h = super::parse_stats("local".into(), out);
        assert_eq!(h.cpu_percent.map(|c| c.round()), Some(50.0));
        assert_eq!(h.memory_used_bytes, Some(3_000_000 * 1024));
        assert_eq!(h.disk_total_bytes, Some(50_000_000 * 1024));
        assert_eq!(h.disk_used_bytes, Some(12_000_000 * 1024));
    }
}
