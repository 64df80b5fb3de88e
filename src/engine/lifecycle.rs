//! `deployer start` and `restart`: the service's current release brought
//! up again (after `stop`, or to pick up a changed secret), health-checked
//! and audited, under the service's lock.

use super::{Engine, steps};
use crate::hosting::site::Site;
use crate::model::AuditEntry;
use crate::support::error::{Failure, FailureKind};

impl Engine {
    /// A service's current release on a host, as its runtime sees it.
    pub(super) async fn current_release(
        &self,
        site: &Site,
        service: &str,
    ) -> Result<
        (
            crate::hosting::release::ServiceDirs,
            String,
            crate::hosting::runtime::ReleaseCtx,
        ),
        Failure,
    > {
        let dirs = site.dirs(service);
        let current = site.host.current(&dirs).await.ok_or_else(|| {
            Failure::not_found(format!("service '{service}' has no current release"))
        })?;
        let ctx = self
            .release_ctx(&dirs, service, &current)
            .await
            .ok_or_else(|| {
                Failure::not_found(format!("release {current} of '{service}' is not recorded"))
            })?;
        Ok((dirs, current, ctx))
    }

    /// Starts the current release if it is not running; says what it did.
    pub async fn start(&self, service: &str) -> Result<String, Failure> {
        self.host_by_host(service, OnHost::Start).await
    }

    /// Stops the current release and starts it again, health-checked.
    pub async fn restart(&self, service: &str) -> Result<String, Failure> {
        self.host_by_host(service, OnHost::Restart).await
    }

    /// Runs a day-2 action on each of the service's hosts under its lock,
    /// one host after the other, like a rollout: a host that fails stops
    /// the rest, so a bad release never goes down everywhere. Audited.
    pub(super) async fn host_by_host(
        &self,
        service: &str,
        action: OnHost<'_>,
    ) -> Result<String, Failure> {
        self.known_releases(service).await?;
        let _lock = self.lock(service, &super::new_job_id()).await?;
        let sites = self.service_sites(service).await?;
        let started = std::time::Instant::now();
        if self.store().await?.has_dead_jobs(service).await? {
            let bring_up = super::recover::BringUp::Current;
            self.sweep(&sites, service, bring_up, &super::Quiet).await?;
        }
        let mut done = Vec::new();
        let mut result = Ok(());
        for site in &sites {
            if result.is_ok() {
                result = match self.act_on(site, service, &action).await {
                    Ok(d) => {
                        done.push(super::on_host(site, &sites, d));
                        Ok(())
                    }
                    Err(f) => Err(Failure {
                        message: super::on_host(site, &sites, f.message),
                        ..f
                    }),
                };
            }
            site.close().await;
        }
        let result = result.map(|()| done.join("; "));
        let (outcome, details) = match &result {
            Ok(d) => ("success", d.clone()),
            Err(f) => ("failed", f.message.clone()),
        };
        let entry = AuditEntry {
            details,
            ..super::records::audit_entry(
                &self.actor,
                action.name(),
                service,
                None,
                outcome,
                started,
            )
        };
        self.store().await?.audit(&entry).await?;
        result
    }

    async fn act_on(
        &self,
        site: &Site,
        service: &str,
        action: &OnHost<'_>,
    ) -> Result<String, Failure> {
        match action {
            OnHost::Start => self.bring_up_on(site, service, false).await,
            OnHost::Restart => self.bring_up_on(site, service, true).await,
            OnHost::Pause(message) => {
                let page = |s: &str, p: &crate::model::ProxySpec, _: u16| {
                    crate::hosting::proxy::maintenance_config(s, p, message)
                };
                self.rewrite(site, service, &page).await
            }
            OnHost::Resume => {
                self.rewrite(site, service, &crate::hosting::proxy::site_config)
                    .await
            }
        }
    }

    async fn bring_up_on(
        &self,
        site: &Site,
        service: &str,
        restart: bool,
    ) -> Result<String, Failure> {
        let (dirs, current, ctx) = self.current_release(site, service).await?;
        let runtime = site.runtime(ctx.spec.runtime);
        let running = site
            .running_releases(&dirs, service)
            .await
            .iter()
            .any(|(r, _)| *r == current);
        if running && !restart {
            return Ok(format!("release {current} is already running"));
        }
        let in_place = match running {
            true => site.runtime(ctx.spec.runtime).restart_in_place(&ctx).await,
            false => None,
        };
        if let Some(done) = in_place {
            // A rolling restart: Swarm replaces each task, start-first.
            let done = done.map_err(|e| {
                Failure::new(FailureKind::Start, format!("restarting {current}: {e}"))
            })?;
            return Ok(format!("release {current} restarted task by task: {done}"));
        }
        if running {
            runtime.stop(&ctx).await.map_err(|e| {
                Failure::new(FailureKind::Start, format!("stopping {current}: {e}"))
            })?;
        }
        let after = steps::restart_and_verify(site, &self.http, &ctx)
            .await
            .map_err(|e| Failure::new(FailureKind::Start, format!("starting {current}: {e}")))?;
        Ok(format!(
            "release {current} {} (healthy after {} ms)",
            if restart { "restarted" } else { "started" },
            after.as_millis()
        ))
    }
}

/// What a day-2 command does on each host of a service.
pub(super) enum OnHost<'a> {
    Start,
    Restart,
    /// Behind the proxy: the maintenance page, with this text.
    Pause(&'a str),
    Resume,
}

impl OnHost<'_> {
    /// As the audit log says it.
    fn name(&self) -> &'static str {
        match self {
            OnHost::Start => "start",
            OnHost::Restart => "restart",
            OnHost::Pause(_) => "pause",
            OnHost::Resume => "resume",
        }
    }
}

/// One host's answer to `deployer check`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CheckLine {
    pub host: String,
    pub release: Option<String>,
    pub healthy: bool,
    pub ms: Option<u128>,
    pub details: String,
    /// A swarm service's tasks: "running/desired".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<String>,
}

impl Engine {
    /// Asks the service's current release on each target whether it is
    /// healthy (the seed's health-check): a line per host.
    pub async fn check(&self, service: &str) -> Result<Vec<CheckLine>, Failure> {
        self.known_releases(service).await?;
        let mut lines = Vec::new();
        for site in self.service_sites(service).await? {
            lines.push(self.check_on(&site, service).await);
            site.close().await;
        }
        Ok(lines)
    }

    pub(super) async fn check_on(&self, site: &Site, service: &str) -> CheckLine {
        let dirs = site.dirs(service);
        let host = site.host.name();
        let current = site.host.current(&dirs).await;
        let ctx = match &current {
            Some(id) => self.release_ctx(&dirs, service, id).await,
            None => None,
        };
        let Some(ctx) = ctx else {
            return CheckLine {
                host,
                release: current,
                healthy: false,
                ms: None,
                details: "no current release".into(),
                replicas: None,
            };
        };
        let replicas = site.runtime(ctx.spec.runtime).replicas(&ctx).await;
        let budget = std::time::Duration::from_secs(3);
        match steps::look(site, &self.http, &ctx, budget).await {
            Ok(after) => CheckLine {
                host,
                release: current,
                healthy: true,
                ms: Some(after.as_millis()),
                details: "healthy".into(),
                replicas,
            },
            Err(e) => CheckLine {
                host,
                release: current,
                healthy: false,
                ms: None,
                details: match e {
                    crate::hosting::health::Unhealthy::Exited(_) => "not running".into(),
                    crate::hosting::health::Unhealthy::Failed(s) => {
                        s.lines().next().unwrap_or("").to_string()
                    }
                },
                replicas,
            },
        }
    }
}

/// What `deployer logs` asks for.
#[derive(Clone, Copy, Debug)]
pub struct LogQuery {
    /// At most this many lines, from the end.
    pub lines: usize,
    /// Only lines from this time on.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
}

impl Engine {
    /// The end of the current release's log on each of the service's
    /// hosts: the release's log file (process), `docker logs` (docker) or
    /// the unit's journal (systemd). Each with its host's name.
    pub async fn logs(
        &self,
        service: &str,
        query: LogQuery,
    ) -> Result<Vec<(String, String)>, Failure> {
        self.known_releases(service).await?;
        let mut out = Vec::new();
        for site in self.service_sites(service).await? {
            let text = self.logs_on(&site, service, query).await;
            site.close().await;
            out.push((site.host.name(), text?));
        }
        Ok(out)
    }

    async fn logs_on(&self, site: &Site, service: &str, q: LogQuery) -> Result<String, Failure> {
        let (dirs, current, ctx) = self.current_release(site, service).await?;
        let runtime = site.runtime(ctx.spec.runtime);
        let Some(cmd) = runtime.log_cmd(&ctx, q.lines, q.since) else {
            // A process release's log is a file on this machine.
            let text = tokio::fs::read_to_string(dirs.log_file(&current))
                .await
                .unwrap_or_default();
            return Ok(process_log_tail(&text, q));
        };
        let out = site
            .host
            .run(&cmd, std::time::Duration::from_secs(30))
            .await
            .map_err(|e| Failure::new(FailureKind::Unreachable, e))?;
        Ok(format!("{}{}", out.stdout, out.stderr))
    }
}

/// The last lines of a process's log (each starts with its time, as the
/// log writer put it) from `since` on.
fn process_log_tail(text: &str, q: LogQuery) -> String {
    let since = q
        .since
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    let mut keep = since.is_none();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            if let Some(s) = &since
                && l.len() >= 24
                && l.as_bytes()[4] == b'-'
            {
                keep = &l[..24] >= s.as_str();
            }
            keep
        })
        .collect();
    let from = lines.len().saturating_sub(q.lines);
    lines[from..].iter().map(|l| format!("{l}\n")).collect()
}
