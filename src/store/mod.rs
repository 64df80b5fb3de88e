//! The store: jobs with their phases, releases and the audit log, in one
//! SQLite file under the state directory. Jobs are written as they change, so
//! what a crash leaves behind says how far a job got. SQL is kept portable
//! (`$1` placeholders) for a PostgreSQL store later.

mod registry;

pub use registry::RegistryEntry;

use crate::model::{AuditEntry, Job, JobView, PhaseView, Release, ReleaseStatus};
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// A store operation that failed, with what it was doing.
#[derive(Debug, thiserror::Error)]
#[error("state database: {doing}: {source}")]
pub struct StoreError {
    doing: String,
    source: sqlx::Error,
}

impl From<StoreError> for crate::error::Failure {
    fn from(e: StoreError) -> Self {
        crate::error::Failure::internal(e.to_string())
    }
}

fn ctx(doing: impl Into<String>) -> impl FnOnce(sqlx::Error) -> StoreError {
    let doing = doing.into();
    move |source| StoreError { doing, source }
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        service_name TEXT NOT NULL,
        service_path TEXT NOT NULL,
        status TEXT NOT NULL,
        droplet_id INTEGER,
        service_port INTEGER NOT NULL,
        service_url TEXT,
        method TEXT NOT NULL,
        release_id TEXT,
        previous_release TEXT,
        registration TEXT,
        rollback TEXT,
        transfer TEXT,
        started_at TEXT NOT NULL,
        completed_at TEXT,
        success INTEGER NOT NULL,
        error TEXT,
        failure TEXT,
        actor TEXT NOT NULL,
        hosts TEXT
    )",
    "CREATE INDEX IF NOT EXISTS jobs_service ON jobs (service_name, started_at)",
    "CREATE TABLE IF NOT EXISTS phases (
        job_id TEXT NOT NULL REFERENCES jobs (id),
        idx INTEGER NOT NULL,
        phase TEXT NOT NULL,
        status TEXT NOT NULL,
        started_at TEXT,
        completed_at TEXT,
        duration_ms INTEGER,
        details TEXT NOT NULL,
        error TEXT,
        steps TEXT,
        PRIMARY KEY (job_id, idx)
    )",
    "CREATE TABLE IF NOT EXISTS releases (
        service_name TEXT NOT NULL,
        id TEXT NOT NULL,
        status TEXT NOT NULL,
        job_id TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        created_at TEXT NOT NULL,
        spec TEXT NOT NULL,
        PRIMARY KEY (service_name, id)
    )",
    "CREATE TABLE IF NOT EXISTS registry (
        service_name TEXT PRIMARY KEY,
        droplet_id INTEGER NOT NULL,
        endpoint TEXT NOT NULL,
        registered_at TEXT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        service_name TEXT NOT NULL,
        job_id TEXT,
        outcome TEXT NOT NULL,
        duration_ms INTEGER,
        details TEXT NOT NULL
    )",
];

/// The SQLite store.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn parse_ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

fn json<T: serde::Serialize>(v: &Option<T>) -> Option<String> {
    v.as_ref().and_then(|v| serde_json::to_string(v).ok())
}

fn from_json<T: serde::de::DeserializeOwned>(s: Option<String>) -> Option<T> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

impl Store {
    /// Opens (creating if needed) `STATE_DIR/deployer.db`.
    pub async fn open(state_dir: &Path) -> Result<Store, StoreError> {
        // deployer's state is its owner's only: directory 0700, files 0600.
        crate::release::private_dir(state_dir).map_err(|e| StoreError {
            doing: format!("creating state directory {}", state_dir.display()),
            source: sqlx::Error::Io(e),
        })?;
        let path = state_dir.join("deployer.db");
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(ctx("parsing path"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(ctx(format!("opening {}", path.display())))?;
        // SQLite makes its -wal and -shm files with the database's mode.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
            StoreError {
                doing: format!("making {} private", path.display()),
                source: sqlx::Error::Io(e),
            }
        })?;
        for stmt in SCHEMA {
            sqlx::query(*stmt)
                .execute(&pool)
                .await
                .map_err(ctx("creating schema"))?;
        }
        // Databases made before phases recorded their steps.
        let has_steps =
            sqlx::query("SELECT 1 FROM pragma_table_info('phases') WHERE name = 'steps'")
                .fetch_optional(&pool)
                .await
                .map_err(ctx("reading schema"))?
                .is_some();
        if !has_steps {
            sqlx::query("ALTER TABLE phases ADD COLUMN steps TEXT")
                .execute(&pool)
                .await
                .map_err(ctx("adding the steps column"))?;
        }
        Ok(Store { pool })
    }

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
                started_at, completed_at, success, error, failure, actor, hosts)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)"
        } else {
            "UPDATE jobs SET kind = $2, service_name = $3, service_path = $4, status = $5,
                droplet_id = $6, service_port = $7, service_url = $8, method = $9, release_id = $10,
                previous_release = $11, registration = $12, rollback = $13, transfer = $14,
                started_at = $15, completed_at = $16, success = $17, error = $18, failure = $19,
                actor = $20, hosts = $21
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
            Some(row) => Ok(Some(self.job_from_row(row).await?)),
            None => Ok(None),
        }
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
            jobs.push(self.job_from_row(row).await?);
        }
        Ok(jobs)
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
        }))
    }

    /// Marks a service's jobs that are still `running` as failed because
    /// the deployer running them died (only called under the service's lock,
    /// so none of them can really be running), and their pending releases
    /// as failed. Returns the ids of the jobs so marked.
    pub async fn mark_interrupted(&self, service: &str) -> Result<Vec<String>, StoreError> {
        let now = ts(&Utc::now());
        let ids: Vec<String> =
            sqlx::query("SELECT id FROM jobs WHERE service_name = $1 AND status = 'running'")
                .bind(service)
                .fetch_all(&self.pool)
                .await
                .map_err(ctx("finding interrupted jobs"))?
                .into_iter()
                .map(|r| r.get("id"))
                .collect();
        for id in &ids {
            sqlx::query(
                "UPDATE jobs SET status = 'failed', failure = 'interrupted', completed_at = $1,
                    error = 'interrupted: the deployer running this job stopped before it finished'
                 WHERE id = $2",
            )
            .bind(&now)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(ctx(format!("marking job {id} interrupted")))?;
            sqlx::query(
                "UPDATE phases SET status = 'failed', completed_at = $1, error = 'interrupted'
                 WHERE job_id = $2 AND status = 'running'",
            )
            .bind(&now)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(ctx(format!("marking phases of job {id} interrupted")))?;
            sqlx::query(
                "UPDATE releases SET status = 'failed' WHERE job_id = $1 AND status = 'pending'",
            )
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(ctx(format!("marking releases of job {id} failed")))?;
        }
        Ok(ids)
    }

    pub async fn save_release(&self, r: &Release) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO releases (service_name, id, status, job_id, content_hash, created_at, spec)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (service_name, id) DO UPDATE SET status = excluded.status",
        )
        .bind(&r.service_name)
        .bind(&r.id)
        .bind(r.status.as_str())
        .bind(&r.job_id)
        .bind(&r.content_hash)
        .bind(ts(&r.created_at))
        .bind(serde_json::to_string(&r.spec.without_env_values()).unwrap_or_default())
        .execute(&self.pool)
        .await
        .map_err(ctx(format!("saving release {}", r.id)))?;
        Ok(())
    }

    pub async fn set_release_status(
        &self,
        service: &str,
        id: &str,
        status: ReleaseStatus,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE releases SET status = $1 WHERE service_name = $2 AND id = $3")
            .bind(status.as_str())
            .bind(service)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(ctx(format!("updating release {id}")))?;
        Ok(())
    }

    /// A service's releases, newest first.
    pub async fn releases(&self, service: &str) -> Result<Vec<Release>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM releases WHERE service_name = $1 ORDER BY created_at DESC, id DESC",
        )
        .bind(service)
        .fetch_all(&self.pool)
        .await
        .map_err(ctx(format!("reading releases of {service}")))?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                Some(Release {
                    service_name: r.get("service_name"),
                    id: r.get("id"),
                    status: ReleaseStatus::parse(&r.get::<String, _>("status")),
                    job_id: r.get("job_id"),
                    content_hash: r.get("content_hash"),
                    created_at: parse_ts(&r.get::<String, _>("created_at")),
                    spec: serde_json::from_str(&r.get::<String, _>("spec")).ok()?,
                })
            })
            .collect())
    }

    pub async fn audit(&self, e: &AuditEntry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit (at, actor, action, service_name, job_id, outcome, duration_ms, details)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(ts(&e.at))
        .bind(&e.actor)
        .bind(&e.action)
        .bind(&e.service_name)
        .bind(&e.job_id)
        .bind(&e.outcome)
        .bind(e.duration_ms)
        .bind(&e.details)
        .execute(&self.pool)
        .await
        .map_err(ctx("writing audit line"))?;
        Ok(())
    }

    /// Audit lines, oldest first, optionally for one service.
    pub async fn audit_log(
        &self,
        service: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM (SELECT * FROM audit WHERE ($1 IS NULL OR service_name = $1)
               ORDER BY id DESC LIMIT $2) ORDER BY id",
        )
        .bind(service)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(ctx("reading audit log"))?;
        Ok(rows
            .into_iter()
            .map(|r| AuditEntry {
                at: parse_ts(&r.get::<String, _>("at")),
                actor: r.get("actor"),
                action: r.get("action"),
                service_name: r.get("service_name"),
                job_id: r.get("job_id"),
                outcome: r.get("outcome"),
                duration_ms: r.get("duration_ms"),
                details: r.get("details"),
            })
            .collect())
    }

    /// Marks every job still pending or running as interrupted: called when
    /// `deployer serve` starts, since none of them can be running then.
    pub async fn interrupt_all(&self) -> Result<Vec<String>, StoreError> {
        let services: Vec<String> = sqlx::query(
            "SELECT DISTINCT service_name FROM jobs WHERE status IN ('running', 'pending')",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(ctx("finding unfinished jobs"))?
        .into_iter()
        .map(|r| r.get("service_name"))
        .collect();
        sqlx::query("UPDATE jobs SET status = 'running' WHERE status = 'pending'")
            .execute(&self.pool)
            .await
            .map_err(ctx("finding unfinished jobs"))?;
        let mut ids = Vec::new();
        for s in services {
            ids.extend(self.mark_interrupted(&s).await?);
        }
        Ok(ids)
    }

    /// How many jobs are in each status.
    pub async fn job_counts(&self) -> Result<std::collections::BTreeMap<String, i64>, StoreError> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
            .fetch_all(&self.pool)
            .await
            .map_err(ctx("counting jobs"))?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get::<String, _>("status"), r.get::<i64, _>("n")))
            .collect())
    }

    pub async fn close(self) {
        self.pool.close().await;
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
