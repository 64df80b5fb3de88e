//! Backups on demand: `deployer backup`, `backups`, `restore` and
//! `snapshot`, each on the service's current release's `[backup]`, under
//! the service's lock where it changes something.

use super::Engine;
use crate::hosting::backup::{BackupEnv, BackupInfo};
use crate::hosting::release::ServiceDirs;
use crate::hosting::site::Site;
use crate::model::BackupSpec;
use crate::support::error::{Failure, FailureKind};

/// What a backup of a service needs: its spec, where, with what.
struct Ready {
    spec: BackupSpec,
    dirs: ServiceDirs,
    env: BackupEnv,
    current: Option<String>,
}

impl Engine {
    async fn ready(&self, site: &Site, service: &str) -> Result<Ready, Failure> {
        let (dirs, current, ctx) = self.current_release(site, service).await?;
        let spec = ctx.spec.backup.clone().ok_or_else(|| {
            Failure::invalid(format!(
                "release {current} of '{service}' has no [backup] in its service.toml"
            ))
        })?;
        Ok(Ready {
            spec,
            env: BackupEnv {
                env: ctx.base_env(),
                secrets: ctx.secrets,
            },
            dirs,
            current: Some(current),
        })
    }

    /// Backs a service up now, under its lock.
    pub async fn backup(&self, service: &str) -> Result<BackupInfo, Failure> {
        self.known_releases(service).await?;
        let _lock = self.lock(service, &super::new_job_id()).await?;
        let site = self.first_site(service).await?;
        let result = async {
            let r = self.ready(&site, service).await?;
            crate::hosting::backup::take(&site.host, &r.dirs, &r.spec, r.current.as_deref(), &r.env)
                .await
                .map_err(|e| Failure::new(FailureKind::Backup, e))
        }
        .await;
        site.close().await;
        result
    }

    /// A service's backups, oldest first.
    pub async fn backups(&self, service: &str) -> Result<Vec<BackupInfo>, Failure> {
        crate::input::plan::validate_name(service)?;
        let site = self.first_site(service).await?;
        let found = crate::hosting::backup::list(&site.host, &site.dirs(service)).await;
        site.close().await;
        found.map_err(|e| Failure::new(FailureKind::Backup, e))
    }

    /// Puts a backup of a service back, under its lock.
    pub async fn restore(&self, service: &str, id: &str) -> Result<(), Failure> {
        self.known_releases(service).await?;
        let _lock = self.lock(service, &super::new_job_id()).await?;
        let site = self.first_site(service).await?;
        let result = async {
            let r = self.ready(&site, service).await?;
            crate::hosting::backup::restore(&site.host, &r.dirs, &r.spec, id, &r.env)
                .await
                .map_err(|e| match e {
                    crate::hosting::backup::BackupError::NotFound(_) => Failure::not_found(e),
                    e => Failure::new(FailureKind::Backup, e),
                })
        }
        .await;
        site.close().await;
        result
    }

    /// Backs up every service whose current release has a `[backup]`.
    pub async fn snapshot(&self) -> Result<Vec<(String, Result<BackupInfo, Failure>)>, Failure> {
        let services = self.existing_store().await?.current_services().await?;
        let mut done = Vec::new();
        for service in services {
            let started = std::time::Instant::now();
            let result = self.backup(&service).await;
            let wanted = !matches!(&result, Err(f) if f.kind == FailureKind::Invalid);
            if !wanted {
                continue;
            }
            let (outcome, details) = match &result {
                Ok(b) => ("success", format!("backup {}", b.id)),
                Err(f) => ("failed", f.message.clone()),
            };
            let entry = crate::model::AuditEntry {
                details,
                ..super::records::audit_entry(
                    &self.actor,
                    "snapshot",
                    &service,
                    None,
                    outcome,
                    started,
                )
            };
            self.store().await?.audit(&entry).await?;
            done.push((service, result));
        }
        Ok(done)
    }
}
