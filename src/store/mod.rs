//! The store: jobs with their phases, releases and the audit log, in one
//! SQLite file under the state directory. Jobs are written as they change, so
//! what a crash leaves behind says how far a job got. SQL is kept portable
//! (`$1` placeholders) for a PostgreSQL store later.

mod jobs;
pub mod owner;
mod registry;

pub use registry::RegistryEntry;

use crate::model::{AuditEntry, Release, ReleaseStatus};
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

impl From<StoreError> for crate::support::error::Failure {
    fn from(e: StoreError) -> Self {
        crate::support::error::Failure::internal(e.to_string())
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
        hosts TEXT,
        notifications TEXT,
        git TEXT,
        owner TEXT,
        recovered INTEGER
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
        git TEXT,
        PRIMARY KEY (service_name, id)
    )",
    "CREATE TABLE IF NOT EXISTS registry (
        service_name TEXT PRIMARY KEY,
        droplet_id INTEGER NOT NULL,
        endpoint TEXT NOT NULL,
        registered_at TEXT NOT NULL
    )",
    // The hosts a service's current release runs on: written by each job
    // that succeeds, read by rollback, stop, start, restart, check and logs.
    "CREATE TABLE IF NOT EXISTS service_hosts (
        service_name TEXT PRIMARY KEY,
        hosts TEXT NOT NULL,
        job_id TEXT NOT NULL
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

/// Adds a TEXT column to a table made before it existed.
async fn add_column(
    pool: &SqlitePool,
    table: &str,
    column: &str,
    alter: &'static str,
) -> Result<(), StoreError> {
    let has = sqlx::query("SELECT 1 FROM pragma_table_info($1) WHERE name = $2")
        .bind(table)
        .bind(column)
        .fetch_optional(pool)
        .await
        .map_err(ctx("reading schema"))?
        .is_some();
    if !has {
        sqlx::query(alter)
            .execute(pool)
            .await
            .map_err(ctx(format!("adding the {column} column")))?;
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) `STATE_DIR/deployer.db`.
    pub async fn open(state_dir: &Path) -> Result<Store, StoreError> {
        // deployer's state is its owner's only: directory 0700, files 0600.
        crate::support::private_dir(state_dir).map_err(|e| StoreError {
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
        // Databases made before phases recorded their steps and jobs their
        // notifications.
        for (table, column, alter) in [
            (
                "phases",
                "steps",
                "ALTER TABLE phases ADD COLUMN steps TEXT",
            ),
            (
                "jobs",
                "notifications",
                "ALTER TABLE jobs ADD COLUMN notifications TEXT",
            ),
            ("jobs", "git", "ALTER TABLE jobs ADD COLUMN git TEXT"),
            ("jobs", "owner", "ALTER TABLE jobs ADD COLUMN owner TEXT"),
            (
                "jobs",
                "recovered",
                "ALTER TABLE jobs ADD COLUMN recovered INTEGER",
            ),
            (
                "releases",
                "git",
                "ALTER TABLE releases ADD COLUMN git TEXT",
            ),
        ] {
            add_column(&pool, table, column, alter).await?;
        }
        // What a reader settles and a sweep looks for, found without a
        // scan of every job.
        for index in [
            "CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status)",
            "CREATE INDEX IF NOT EXISTS jobs_recovered ON jobs (recovered)",
        ] {
            sqlx::query(index)
                .execute(&pool)
                .await
                .map_err(ctx("creating indexes"))?;
        }
        Ok(Store { pool })
    }

    /// A store that lives in memory only (`deploy --dry-run` writes
    /// nothing).
    pub async fn in_memory() -> Result<Store, StoreError> {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .map_err(ctx("opening a store in memory"))?;
        for stmt in SCHEMA {
            sqlx::query(*stmt)
                .execute(&pool)
                .await
                .map_err(ctx("creating schema"))?;
        }
        Ok(Store { pool })
    }

    pub async fn save_release(&self, r: &Release) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO releases (service_name, id, status, job_id, content_hash, created_at, spec, git)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (service_name, id) DO UPDATE SET status = excluded.status",
        )
        .bind(&r.service_name)
        .bind(&r.id)
        .bind(r.status.as_str())
        .bind(&r.job_id)
        .bind(&r.content_hash)
        .bind(ts(&r.created_at))
        .bind(serde_json::to_string(&r.spec.without_env_values()).unwrap_or_default())
        .bind(json(&r.commit))
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

    /// The services that have a current release.
    pub async fn current_services(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT service_name FROM releases WHERE status = 'current' ORDER BY service_name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(ctx("listing services"))?;
        Ok(rows.into_iter().map(|r| r.get("service_name")).collect())
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
                    commit: from_json(r.get("git")),
                })
            })
            .collect())
    }

    /// Asks the database a real question (how many jobs it holds).
    pub async fn ping(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT count(*) AS n FROM jobs")
            .fetch_one(&self.pool)
            .await
            .map_err(ctx("counting jobs"))?;
        Ok(row.get("n"))
    }

    /// Records the hosts a service's current release runs on.
    pub async fn set_service_hosts(
        &self,
        service: &str,
        hosts: &[String],
        job_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO service_hosts (service_name, hosts, job_id) VALUES ($1, $2, $3)
             ON CONFLICT (service_name) DO UPDATE SET hosts = $2, job_id = $3",
        )
        .bind(service)
        .bind(serde_json::to_string(hosts).unwrap_or_default())
        .bind(job_id)
        .execute(&self.pool)
        .await
        .map_err(ctx(format!("recording the hosts of {service}")))?;
        Ok(())
    }

    /// The hosts a service's current release runs on (empty when unknown).
    pub async fn service_hosts(&self, service: &str) -> Result<Vec<String>, StoreError> {
        let row = sqlx::query("SELECT hosts FROM service_hosts WHERE service_name = $1")
            .bind(service)
            .fetch_optional(&self.pool)
            .await
            .map_err(ctx(format!("reading the hosts of {service}")))?;
        Ok(row
            .and_then(|r| serde_json::from_str(&r.get::<String, _>("hosts")).ok())
            .unwrap_or_default())
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

    pub async fn close(self) {
        self.pool.close().await;
    }
}
