//! After a crash the service is up, and nothing of it runs that no record
//! names. A deployer that dies mid-job leaves the service down, or a
//! release running that never became current; a drain whose deployer died
//! may outlive its deadline. The next deployer command on the service
//! (under its lock) sweeps: it takes down what interrupted jobs brought up
//! and removes what they left (unit, environment file, image or venv,
//! files), stops every running release that is neither current nor still
//! within its drain, and brings `current` back up when a job was
//! interrupted. `serve` does the same at start and on a timer.

use super::{Engine, Event, Sink, steps};
use crate::error::Failure;
use crate::model::{Job, RuntimeKind};
use crate::release::ServiceDirs;
use crate::runtime::ReleaseCtx;
use crate::site::Site;

/// What a sweep may do beyond stopping strays.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum BringUp {
    /// Start `current` when it is not running (a job was interrupted).
    Current,
    /// Leave `current` as it is (`deployer stop` is about to stop it).
    No,
}

impl Engine {
    /// Sweeps a service on one host. The caller holds the service's lock.
    /// Behind the proxy `current` comes back first (on its own port) and
    /// the proxy is pointed at it again, so the public port never goes to
    /// a release that is being taken down; without it, what holds the
    /// port goes first.
    pub(super) async fn recover(
        &self,
        site: &Site,
        service: &str,
        jobs: &[Job],
        bring_up: BringUp,
        sink: &dyn Sink,
    ) {
        let dirs = site.dirs(service);
        let current = site.host.current(&dirs).await;
        let current_ctx = match &current {
            Some(c) => self.release_ctx(&dirs, service, c).await,
            None => None,
        };
        let bring_up = match current_ctx {
            Some(ctx) if bring_up == BringUp::Current && !jobs.is_empty() => Some(ctx),
            _ => None,
        };
        let proxied = bring_up.as_ref().filter(|c| c.spec.proxy.is_some());
        if let Some(ctx) = proxied {
            self.bring_up(site, ctx, sink).await;
            if let Err(e) = steps::proxy::point_at_current(site, ctx).await {
                let note = format!(
                    "recovery: pointing the proxy at release {}: {e}",
                    ctx.release
                );
                self.recovered(service, &note, sink).await;
            }
        }
        for job in jobs {
            let Some(release) = job.release.as_deref() else {
                continue;
            };
            if Some(release) == current.as_deref() {
                continue;
            }
            let Some(ctx) = self.release_ctx(&dirs, service, release).await else {
                continue;
            };
            let runtime = site.runtime(ctx.spec.runtime);
            let _ = runtime.stop(&ctx).await;
            runtime.remove_build(&ctx).await;
            let _ = site.host.remove_release(&dirs, release).await;
            ServiceDirs::new(&self.state_dir, service).remove_env_values(release);
            let note = format!(
                "recovered: took down release {release}, left by interrupted job {}",
                job.deploy_job_id
            );
            self.recovered(service, &note, sink).await;
        }
        self.stop_strays(site, service, current.as_deref(), sink)
            .await;
        site.remember_running(None);
        if let Some(ctx) = bring_up.as_ref().filter(|c| c.spec.proxy.is_none()) {
            self.bring_up(site, ctx, sink).await;
        }
    }

    /// Starts `current` again when it is not running, health-checked.
    async fn bring_up(&self, site: &Site, ctx: &ReleaseCtx, sink: &dyn Sink) {
        let running = site.running_releases(&ctx.dirs, &ctx.service).await;
        if running.iter().any(|(r, _)| *r == ctx.release) {
            return;
        }
        let current = &ctx.release;
        let note = match steps::restart_and_verify(site, &self.http, ctx).await {
            Ok(after) => format!(
                "recovered: restarted release {current} (healthy after {} ms)",
                after.as_millis()
            ),
            Err(e) => format!("recovery: restarting release {current} FAILED: {e}"),
        };
        self.recovered(&ctx.service, &note, sink).await;
    }

    /// Stops each running release that is not `current` and not within
    /// its drain: started by a job that died before switching to it, or
    /// drained by a deployer that died before the drain ended.
    async fn stop_strays(
        &self,
        site: &Site,
        service: &str,
        current: Option<&str>,
        sink: &dyn Sink,
    ) {
        let dirs = site.dirs(service);
        let running = site.running_releases(&dirs, service).await;
        if running.iter().all(|(r, _)| Some(r.as_str()) == current) {
            return;
        }
        let drains = steps::proxy::drains(site, &dirs).await;
        let now = chrono::Utc::now().timestamp();
        for (rel, _) in running {
            if Some(rel.as_str()) == current {
                continue;
            }
            let why = match drains.get(&rel) {
                Some(until) if *until > now => continue,
                Some(_) => "its drain is over",
                None => "it is not current and no job runs",
            };
            let Some(ctx) = self.release_ctx(&dirs, service, &rel).await else {
                continue;
            };
            // Swarm replaces its own tasks.
            if ctx.spec.runtime == RuntimeKind::Swarm {
                continue;
            }
            let note = match site.runtime(ctx.spec.runtime).stop(&ctx).await {
                Ok(()) => format!("recovered: stopped release {rel} ({why})"),
                Err(e) => format!("recovery: stopping release {rel} FAILED: {e}"),
            };
            steps::proxy::forget_drain(site, &dirs, &rel).await;
            self.recovered(service, &note, sink).await;
        }
    }

    /// Says what recovery did, to the front end and in the audit log.
    async fn recovered(&self, service: &str, note: &str, sink: &dyn Sink) {
        sink.event(&Event::Note(note));
        let entry = crate::model::AuditEntry {
            details: note.to_string(),
            duration_ms: None,
            ..super::records::audit_entry(
                &self.actor,
                "recover",
                service,
                None,
                "done",
                std::time::Instant::now(),
            )
        };
        if let Ok(store) = self.store().await {
            let _ = store.audit(&entry).await;
        }
    }

    /// A stored release as its runtime sees it: spec, environment values and
    /// secrets.
    pub(super) async fn release_ctx(
        &self,
        dirs: &ServiceDirs,
        service: &str,
        id: &str,
    ) -> Option<ReleaseCtx> {
        let release = self.release_record(service, id).await?;
        let secrets = self.secrets_for(&release.spec).unwrap_or_default();
        Some(ReleaseCtx {
            service: service.to_string(),
            release: id.to_string(),
            dirs: dirs.clone(),
            spec: release.spec,
            secrets,
        })
    }

    /// Marks the service's jobs whose deployer died interrupted, and
    /// sweeps the service on each of `sites` (the caller holds the lock).
    pub(super) async fn sweep(
        &self,
        sites: &[Site],
        service: &str,
        bring_up: BringUp,
        sink: &dyn Sink,
    ) -> Result<(), Failure> {
        let store = self.store().await?;
        store.mark_interrupted(service).await?;
        let interrupted = store.unrecovered(service).await?;
        let mut jobs = Vec::new();
        for id in &interrupted {
            jobs.extend(store.job(id).await?);
        }
        if !interrupted.is_empty() {
            let msg = format!(
                "earlier job {} was interrupted; marked failed, recovering",
                interrupted.join(", ")
            );
            sink.event(&Event::Note(&msg));
        }
        for site in sites {
            self.recover(site, service, &jobs, bring_up, sink).await;
        }
        store.set_recovered(&interrupted).await?;
        ServiceDirs::new(&self.state_dir, service).forget_drains();
        Ok(())
    }

    /// What any command on a service does first: when a job of it was
    /// interrupted or a drain is overdue, and no other job holds its lock,
    /// sweep it on its hosts. Quiet when there is nothing to do.
    pub async fn recover_service(&self, service: &str, sink: &dyn Sink) -> Result<(), Failure> {
        if crate::plan::validate_name(service).is_err()
            || !self.state_dir.join("deployer.db").exists()
        {
            return Ok(());
        }
        let store = self.store().await?;
        let dead = store.has_dead_jobs(service).await?;
        let overdue = ServiceDirs::new(&self.state_dir, service).drain_overdue();
        if !dead && !overdue {
            return Ok(());
        }
        self.sweep_service(service, sink).await
    }

    /// Sweeps a service on its hosts when no other job holds its lock (a
    /// live holder is running a job of it, and sweeps itself).
    pub async fn sweep_service(&self, service: &str, sink: &dyn Sink) -> Result<(), Failure> {
        let Ok(_lock) = self.try_lock(service).await else {
            return Ok(());
        };
        let sites = self.service_sites(service).await?;
        let result = self.sweep(&sites, service, BringUp::Current, sink).await;
        for site in &sites {
            site.close().await;
        }
        result
    }

    /// `serve`, at start and on its timer: `also`, and every service with
    /// a job whose deployer died or with an overdue drain, swept. A
    /// service that cannot be swept now (a host down) is tried next time.
    pub async fn recover_all(&self, also: &[String], sink: &dyn Sink) -> Vec<String> {
        let mut services = also.to_vec();
        if let Ok(store) = self.store().await {
            services.extend(store.services_with_dead_jobs().await.unwrap_or_default());
        }
        services.extend(ServiceDirs::services_draining_overdue(&self.state_dir));
        services.sort();
        services.dedup();
        for service in &services {
            if let Err(f) = self.sweep_service(service, sink).await {
                sink.event(&Event::Note(&format!(
                    "recovery of {service}: {}",
                    f.message
                )));
            }
        }
        services
    }
}
