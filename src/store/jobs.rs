//! Jobs with their phases (and each phase's steps): inserted once, saved as
//! they change, read back, and marked interrupted when their deployer died.

use super::owner::Owner;
use super::{Store, StoreError, ctx, from_json, json, parse_ts, ts};
use crate::model::{Job, JobView, PhaseView};
use chrono::Utc;
use sqlx::Row;

impl Store {
    /// Records a new job and its phases. A job id that exists already is
    /// an error: two jobs never merge.
    pub async fn insert_job(&self, job: &Job) -> Result<(), StoreError> {
        self.write_job(job, true).await
    }

    /// Writes a recorded job's changes and all its phases. A job that was
    /// never inserted is an error.
    pub async fn save_job(&self, job: &Job) -> Result<(), StoreError> {
        self.write_job(job, false).await
    }

    async fn write_job(&self, job: &Job, insert: bool) -> Result<(), StoreError> {
        let v = job.view();
        let id = &v.deploy_job_id;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(ctx("beginning transaction"))?;
        let sql = if insert {
            "INSERT INTO jobs (id, kind, service_name, service_path, status, droplet_id, service_port,
                service_url, method, release_id, previous_release, registration, rollback, transfer,
                started_at, completed_at, success, error, failure, actor, hosts, notifications, git, owner)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24)"
        } else {
            "UPDATE jobs SET kind = $2, service_name = $3, service_path = $4, status = $5,
                droplet_id = $6, service_port = $7, service_url = $8, method = $9, release_id = $10,
                previous_release = $11, registration = $12, rollback = $13, transfer = $14,
                started_at = $15, completed_at = $16, success = $17, error = $18, failure = $19,
                actor = $20, hosts = $21, notifications = $22, git = $23, owner = $24,
                recovered = NULL
             WHERE id = $1"
        };
        let done = sqlx::query(sql)
            .bind(id)
            .bind(v.kind.as_str())
            .bind(&v.service_name)
            .bind(&v.service_path)
            .bind(v.status.as_str())
            .bind(v.droplet_id)
            .bind(v.service_port as i64)
            .bind(&v.service_url)
            .bind(&v.deployment_method)
            .bind(&v.release)
            .bind(&v.previous_release)
            .bind(json(&v.registration))
            .bind(json(&v.rollback))
            .bind(json(&v.transfer))
            .bind(ts(&v.started_at))
            .bind(v.completed_at.as_ref().map(ts))
            .bind(v.success)
            .bind(&v.error)
            .bind(&v.failure)
            .bind(&v.actor)
            .bind(
                (!v.hosts.is_empty())
                    .then(|| serde_json::to_string(&v.hosts).ok())
                    .flatten(),
            )
            .bind(
                (!v.notifications.is_empty())
                    .then(|| serde_json::to_string(&v.notifications).ok())
                    .flatten(),
            )
            .bind(json(&v.commit))
            // Whoever writes a job runs it: a reader tells a dead one by this.
            .bind(Owner::me().encode())
            .execute(&mut *tx)
            .await
            .map_err(ctx(format!("saving job {id}")))?;
        if done.rows_affected() == 0 {
            return Err(StoreError {
                doing: format!("saving job {id}"),
                source: sqlx::Error::RowNotFound,
            });
        }
        write_phases(&mut tx, id, &v.phases).await?;
        tx.commit().await.map_err(ctx("committing job"))?;
        Ok(())
    }

    pub async fn job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let row = sqlx::query("SELECT * FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(ctx(format!("reading job {id}")))?;
        match row {
            Some(row) => Ok(Some(self.job_from_row(self.settle(row).await?).await?)),
            None => Ok(None),
        }
    }

    /// A row as it stands: a job pending or running whose deployer died is
    /// marked interrupted first, so no reader ever says `running` for it.
    async fn settle(
        &self,
        row: sqlx::sqlite::SqliteRow,
    ) -> Result<sqlx::sqlite::SqliteRow, StoreError> {
        let status: String = row.get("status");
        let owner: Option<String> = row.get("owner");
        let dead = owner
            .as_deref()
            .and_then(Owner::decode)
            .filter(|o| !o.alive());
        let (Some(owner), "running" | "pending") = (dead, status.as_str()) else {
            return Ok(row);
        };
        let id: String = row.get("id");
        self.interrupt(&id, &interruption(&status, &owner)).await?;
        sqlx::query("SELECT * FROM jobs WHERE id = $1")
            .bind(&id)
            .fetch_one(&self.pool)
            .await
            .map_err(ctx(format!("reading job {id}")))
    }

    /// Marks one job (pending or running) failed as interrupted, its phases
    /// that were running failed and the rest not run, and the release it
    /// was bringing up failed.
    async fn interrupt(&self, id: &str, reason: &str) -> Result<bool, StoreError> {
        let now = ts(&Utc::now());
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(ctx("beginning transaction"))?;
        let done = sqlx::query(
            "UPDATE jobs SET status = 'failed', failure = 'interrupted', completed_at = $1,
                success = 0, error = $2, recovered = 0
             WHERE id = $3 AND status IN ('running', 'pending')",
        )
        .bind(&now)
        .bind(reason)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(ctx(format!("marking job {id} interrupted")))?;
        sqlx::query(
            "UPDATE phases SET status = 'failed', completed_at = $1, error = 'interrupted'
             WHERE job_id = $2 AND status = 'running'",
        )
        .bind(&now)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(ctx(format!("marking phases of job {id} interrupted")))?;
        sqlx::query(
            "UPDATE phases SET status = 'skipped', details = 'not run: interrupted'
             WHERE job_id = $1 AND status = 'pending'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(ctx(format!("marking phases of job {id} not run")))?;
        sqlx::query(
            "UPDATE releases SET status = 'failed' WHERE job_id = $1 AND status = 'pending'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(ctx(format!("marking releases of job {id} failed")))?;
        tx.commit().await.map_err(ctx("committing job"))?;
        Ok(done.rows_affected() > 0)
    }

    /// A service's jobs, newest first.
    pub async fn history(&self, service: &str, limit: i64) -> Result<Vec<Job>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM jobs WHERE service_name = $1 ORDER BY started_at DESC, rowid DESC LIMIT $2",
        )
        .bind(service)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(ctx(format!("reading history of {service}")))?;
        let mut jobs = Vec::with_capacity(rows.len());
        for row in rows {
            jobs.push(self.job_from_row(self.settle(row).await?).await?);
        }
        Ok(jobs)
    }

    /// The ids of a service's jobs, newest first (as [`Store::history`]).
    pub async fn history_ids(&self, service: &str, limit: i64) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT id FROM jobs WHERE service_name = $1 ORDER BY started_at DESC, rowid DESC LIMIT $2",
        )
        .bind(service)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(ctx(format!("reading history of {service}")))
    }

    async fn job_from_row(&self, row: sqlx::sqlite::SqliteRow) -> Result<Job, StoreError> {
        let id: String = row.get("id");
        let phase_rows = sqlx::query("SELECT * FROM phases WHERE job_id = $1 ORDER BY idx")
            .bind(&id)
            .fetch_all(&self.pool)
            .await
            .map_err(ctx(format!("reading phases of job {id}")))?;
        let phases = phase_rows
            .into_iter()
            .filter_map(|r| {
                let name = crate::model::PhaseName::parse(r.get::<String, _>("phase").as_str())?;
                let duration_ms: Option<i64> = r.get("duration_ms");
                let status: String = r.get("status");
                Some(PhaseView {
                    phase: name,
                    status: serde_json::from_value(serde_json::Value::String(status)).ok()?,
                    started_at: r
                        .get::<Option<String>, _>("started_at")
                        .as_deref()
                        .map(parse_ts),
                    completed_at: r
                        .get::<Option<String>, _>("completed_at")
                        .as_deref()
                        .map(parse_ts),
                    duration_seconds: duration_ms.map(|ms| ms as f64 / 1000.0),
                    duration_ms,
                    details: r.get("details"),
                    error: r.get("error"),
                    steps: from_json(r.get("steps")).unwrap_or_default(),
                })
            })
            .collect();
        let started_at = parse_ts(&row.get::<String, _>("started_at"));
        let completed_at = row
            .get::<Option<String>, _>("completed_at")
            .as_deref()
            .map(parse_ts);
        Ok(Job::from(JobView {
            deploy_job_id: id,
            kind: serde_json::from_value(serde_json::Value::String(row.get("kind")))
                .unwrap_or(crate::model::JobKind::Deploy),
            service_name: row.get("service_name"),
            service_path: row.get("service_path"),
            status: crate::model::JobStatus::parse(&row.get::<String, _>("status")),
            droplet_id: row.get("droplet_id"),
            service_port: row.get::<i64, _>("service_port") as u16,
            service_url: row.get("service_url"),
            deployment_method: row.get("method"),
            release: row.get("release_id"),
            previous_release: row.get("previous_release"),
            phases,
            registration: from_json(row.get("registration")),
            rollback: from_json(row.get("rollback")),
            transfer: from_json(row.get("transfer")),
            started_at,
            completed_at,
            duration_seconds: completed_at
                .map(|c| (c - started_at).num_milliseconds() as f64 / 1000.0),
            success: row.get("success"),
            error: row.get("error"),
            failure: row.get("failure"),
            actor: row.get("actor"),
            hosts: from_json(row.get("hosts")).unwrap_or_default(),
            notifications: from_json(row.get("notifications")).unwrap_or_default(),
            commit: from_json(row.get("git")),
        }))
    }

    /// Marks a service's jobs that are pending or running and whose
    /// deployer died as interrupted (the caller holds the service's lock:
    /// a running job with no recorded owner, from before owners were
    /// recorded, cannot be running either). Returns the ids so marked.
    pub async fn mark_interrupted(&self, service: &str) -> Result<Vec<String>, StoreError> {
        self.interrupt_dead(Some(service)).await
    }

    /// Marks every job pending or running whose deployer died as
    /// interrupted: `serve` at start, and on its timer.
    pub async fn interrupt_all(&self) -> Result<Vec<String>, StoreError> {
        self.interrupt_dead(None).await
    }

    async fn interrupt_dead(&self, service: Option<&str>) -> Result<Vec<String>, StoreError> {
        let mut ids = Vec::new();
        for (id, _, reason) in self.dead_jobs(service, true).await? {
            if self.interrupt(&id, &reason).await? {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Whether a job of the service is pending or running with its
    /// deployer dead, or was interrupted and not yet recovered from.
    pub async fn has_dead_jobs(&self, service: &str) -> Result<bool, StoreError> {
        Ok(!self.dead_jobs(Some(service), false).await?.is_empty()
            || !self.unrecovered(service).await?.is_empty())
    }

    /// The services with a job pending or running whose deployer died, or
    /// interrupted and not yet recovered from.
    pub async fn services_with_dead_jobs(&self) -> Result<Vec<String>, StoreError> {
        let mut services: Vec<String> = self
            .dead_jobs(None, false)
            .await?
            .into_iter()
            .map(|(_, s, _)| s)
            .collect();
        let unrecovered: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT service_name FROM jobs WHERE recovered = 0")
                .fetch_all(&self.pool)
                .await
                .map_err(ctx("finding interrupted jobs"))?;
        services.extend(unrecovered);
        services.sort();
        services.dedup();
        Ok(services)
    }

    /// A service's interrupted jobs that no sweep has recovered from yet.
    pub async fn unrecovered(&self, service: &str) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar("SELECT id FROM jobs WHERE service_name = $1 AND recovered = 0")
            .bind(service)
            .fetch_all(&self.pool)
            .await
            .map_err(ctx("finding interrupted jobs"))
    }

    /// Records that a sweep recovered from these jobs.
    pub async fn set_recovered(&self, ids: &[String]) -> Result<(), StoreError> {
        for id in ids {
            sqlx::query("UPDATE jobs SET recovered = 1 WHERE id = $1")
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(ctx(format!("marking job {id} recovered")))?;
        }
        Ok(())
    }

    /// Jobs pending or running whose deployer died: id, service and why
    /// they end. `unowned`: also a running job recorded before owners were
    /// (only under the service's lock can it be known dead).
    async fn dead_jobs(
        &self,
        service: Option<&str>,
        unowned: bool,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        let query = match service {
            Some(s) => sqlx::query(
                "SELECT id, service_name, status, owner FROM jobs
                 WHERE service_name = $1 AND status IN ('running', 'pending')",
            )
            .bind(s),
            None => sqlx::query(
                "SELECT id, service_name, status, owner FROM jobs
                 WHERE status IN ('running', 'pending') ORDER BY service_name",
            ),
        };
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(ctx("finding interrupted jobs"))?;
        let mut dead = Vec::new();
        for row in rows {
            let (id, status): (String, String) = (row.get("id"), row.get("status"));
            let owner = row.get::<Option<String>, _>("owner");
            let reason = match owner.as_deref().map(Owner::decode) {
                Some(Some(o)) if o.alive() => continue,
                Some(Some(o)) => interruption(&status, &o),
                _ if unowned && status == "running" => {
                    "interrupted: the deployer running this job stopped before it finished".into()
                }
                _ if unowned => {
                    "interrupted: the server that accepted this job stopped before it ran; \
                     deploy again"
                        .into()
                }
                _ => continue,
            };
            dead.push((id, row.get("service_name"), reason));
        }
        Ok(dead)
    }

    /// How many jobs are in each status.
    /// (A job whose deployer died counts as failed, as every read says.)
    pub async fn job_counts(&self) -> Result<std::collections::BTreeMap<String, i64>, StoreError> {
        for (id, _, reason) in self.dead_jobs(None, false).await? {
            self.interrupt(&id, &reason).await?;
        }
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
            .fetch_all(&self.pool)
            .await
            .map_err(ctx("counting jobs"))?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get::<String, _>("status"), r.get::<i64, _>("n")))
            .collect())
    }
}

/// Why a job whose deployer died ended, in its record.
fn interruption(status: &str, owner: &Owner) -> String {
    match status {
        "pending" => format!(
            "interrupted: the server that accepted this job (pid {}) stopped before it ran; \
             deploy again",
            owner.pid
        ),
        _ => format!(
            "interrupted: the deployer running this job (pid {}) stopped before it finished",
            owner.pid
        ),
    }
}

/// A job's phases (insert or update by position), in the job's transaction.
async fn write_phases(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    id: &str,
    phases: &[PhaseView],
) -> Result<(), StoreError> {
    for (idx, p) in phases.iter().enumerate() {
        sqlx::query(
                "INSERT INTO phases (job_id, idx, phase, status, started_at, completed_at, duration_ms, details, error, steps)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (job_id, idx) DO UPDATE SET status = excluded.status,
                    started_at = excluded.started_at, completed_at = excluded.completed_at,
                    duration_ms = excluded.duration_ms, details = excluded.details,
                    error = excluded.error, steps = excluded.steps",
            )
            .bind(id)
            .bind(idx as i64)
            .bind(p.phase.as_str())
            .bind(p.status.as_str())
            .bind(p.started_at.as_ref().map(ts))
            .bind(p.completed_at.as_ref().map(ts))
            .bind(p.duration_ms)
            .bind(&p.details)
            .bind(&p.error)
            .bind((!p.steps.is_empty()).then(|| serde_json::to_string(&p.steps).ok()).flatten())
            .execute(&mut **tx)
            .await
            .map_err(ctx(format!("saving phases of job {id}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{JobKind, JobState};

    #[tokio::test]
    async fn a_job_is_inserted_once_and_saved_only_when_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let mut job = Job::pending(
            "deploy-1".into(),
            JobKind::Deploy,
            "web".into(),
            "me".into(),
        );
        store.insert_job(&job).await.unwrap();
        let again = store.insert_job(&job).await.unwrap_err();
        assert!(again.to_string().contains("saving job deploy-1"), "{again}");
        job.state = JobState::Running;
        store.save_job(&job).await.unwrap();
        assert_eq!(
            store.job("deploy-1").await.unwrap().unwrap().state,
            JobState::Running
        );
        let other = Job::pending(
            "deploy-2".into(),
            JobKind::Deploy,
            "web".into(),
            "me".into(),
        );
        let missing = store.save_job(&other).await.unwrap_err();
        assert!(missing.to_string().contains("deploy-2"), "{missing}");
        assert!(store.job("deploy-2").await.unwrap().is_none());
    }
}
