//! After a crash the service is up. A deployer that dies between stopping
//! the old release and the new one passing its health check leaves the
//! service down or running a release that never became current. The next
//! deployer to hold the service's lock (a deploy, or `serve` at startup)
//! takes the interrupted releases down, removes what they left (unit,
//! environment file, image or venv, files), and brings `current` back up.

use super::{Engine, Event, Sink, steps};
use crate::error::Failure;
use crate::model::Job;
use crate::release::ServiceDirs;
use crate::runtime::ReleaseCtx;
use crate::site::Site;

impl Engine {
    /// Cleans up after interrupted jobs of a service on one host and makes
    /// sure `current` runs. The caller holds the service's lock.
    pub(super) async fn recover(&self, site: &Site, service: &str, jobs: &[Job], sink: &dyn Sink) {
        let dirs = site.dirs(service);
        let current = site.host.current(&dirs).await;
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
        let Some(current) = current else { return };
        let running = site.running_releases(&dirs, service).await;
        if running.iter().any(|(r, _)| *r == current) {
            return;
        }
        let Some(ctx) = self.release_ctx(&dirs, service, &current).await else {
            return;
        };
        let note = match steps::restart_and_verify(site, &self.http, &ctx).await {
            Ok(after) => format!(
                "recovered: restarted release {current} (healthy after {} ms)",
                after.as_millis()
            ),
            Err(e) => format!("recovery: restarting release {current} FAILED: {e}"),
        };
        self.recovered(service, &note, sink).await;
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

    /// `serve` at startup: for each service whose jobs a previous server
    /// left unfinished (now marked interrupted), take its lock and recover
    /// it on the configured target.
    pub async fn recover_interrupted(
        &self,
        jobs: Vec<Job>,
        sink: &dyn Sink,
    ) -> Result<(), Failure> {
        let mut services: Vec<String> = jobs.iter().map(|j| j.service_name.clone()).collect();
        services.sort();
        services.dedup();
        for service in services {
            let mine: Vec<Job> = jobs
                .iter()
                .filter(|j| j.service_name == service)
                .cloned()
                .collect();
            let _lock = self.lock(&service, &super::new_job_id()).await?;
            for site in self.service_sites(&service).await? {
                self.recover(&site, &service, &mine, sink).await;
                site.close().await;
            }
        }
        Ok(())
    }
}
