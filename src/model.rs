//! The deploy domain's data: jobs, their six phases, releases, registrations
//! and rollbacks. Status enums carry their data: a failed phase has an error,
//! a pending one has no start time.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Times in JSON: RFC 3339 in UTC with milliseconds, always, so every
/// timestamp deployer prints has the same shape.
pub mod time_format {
    use chrono::{DateTime, SecondsFormat, Utc};

    pub fn ser<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn ser_opt<S: serde::Serializer>(
        t: &Option<DateTime<Utc>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => ser(t, s),
            None => s.serialize_none(),
        }
    }
}

/// The six phases, named exactly as in the deployer spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum PhaseName {
    Validation,
    Transfer,
    Build,
    #[serde(rename = "Start Service")]
    StartService,
    #[serde(rename = "Verify Health")]
    VerifyHealth,
    Register,
}

impl PhaseName {
    pub const ALL: [PhaseName; 6] = [
        PhaseName::Validation,
        PhaseName::Transfer,
        PhaseName::Build,
        PhaseName::StartService,
        PhaseName::VerifyHealth,
        PhaseName::Register,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PhaseName::Validation => "Validation",
            PhaseName::Transfer => "Transfer",
            PhaseName::Build => "Build",
            PhaseName::StartService => "Start Service",
            PhaseName::VerifyHealth => "Verify Health",
            PhaseName::Register => "Register",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// Where a phase is, with the data each state has.
#[derive(Clone, Debug, PartialEq)]
pub enum PhaseState {
    Pending,
    Running {
        started_at: DateTime<Utc>,
    },
    Success {
        started_at: DateTime<Utc>,
        completed_at: DateTime<Utc>,
        details: String,
    },
    Failed {
        started_at: DateTime<Utc>,
        completed_at: DateTime<Utc>,
        details: String,
        error: String,
    },
    Skipped {
        reason: String,
    },
}

/// One phase of a job.
#[derive(Clone, Debug, PartialEq)]
pub struct Phase {
    pub name: PhaseName,
    pub state: PhaseState,
}

/// A phase as the spec's `DeploymentPhase` shows it (JSON, store, API).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct PhaseView {
    pub phase: PhaseName,
    pub status: String,
    #[serde(serialize_with = "crate::model::time_format::ser_opt")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::model::time_format::ser_opt")]
    pub completed_at: Option<DateTime<Utc>>,
    /// Whole seconds would show 0 for most phases, so this is fractional.
    pub duration_seconds: Option<f64>,
    pub duration_ms: Option<i64>,
    pub details: String,
    pub error: Option<String>,
}

impl Phase {
    pub fn pending(name: PhaseName) -> Self {
        Phase {
            name,
            state: PhaseState::Pending,
        }
    }

    pub fn status(&self) -> &'static str {
        match self.state {
            PhaseState::Pending => "pending",
            PhaseState::Running { .. } => "running",
            PhaseState::Success { .. } => "success",
            PhaseState::Failed { .. } => "failed",
            PhaseState::Skipped { .. } => "skipped",
        }
    }

    pub fn duration_ms(&self) -> Option<i64> {
        match &self.state {
            PhaseState::Success {
                started_at,
                completed_at,
                ..
            }
            | PhaseState::Failed {
                started_at,
                completed_at,
                ..
            } => Some((*completed_at - *started_at).num_milliseconds()),
            _ => None,
        }
    }

    pub fn view(&self) -> PhaseView {
        let (started_at, completed_at, details, error) = match &self.state {
            PhaseState::Pending => (None, None, String::new(), None),
            PhaseState::Running { started_at } => (Some(*started_at), None, String::new(), None),
            PhaseState::Success {
                started_at,
                completed_at,
                details,
            } => (
                Some(*started_at),
                Some(*completed_at),
                details.clone(),
                None,
            ),
            PhaseState::Failed {
                started_at,
                completed_at,
                details,
                error,
            } => (
                Some(*started_at),
                Some(*completed_at),
                details.clone(),
                Some(error.clone()),
            ),
            PhaseState::Skipped { reason } => (None, None, reason.clone(), None),
        };
        let duration_ms = self.duration_ms();
        PhaseView {
            phase: self.name,
            status: self.status().to_string(),
            started_at,
            completed_at,
            duration_seconds: duration_ms.map(|ms| ms as f64 / 1000.0),
            duration_ms,
            details,
            error,
        }
    }

    /// Rebuilds a phase from its stored view.
    pub fn from_view(v: &PhaseView) -> Self {
        let now = Utc::now();
        let state = match v.status.as_str() {
            "running" => PhaseState::Running {
                started_at: v.started_at.unwrap_or(now),
            },
            "success" => PhaseState::Success {
                started_at: v.started_at.unwrap_or(now),
                completed_at: v.completed_at.unwrap_or(now),
                details: v.details.clone(),
            },
            "failed" => PhaseState::Failed {
                started_at: v.started_at.unwrap_or(now),
                completed_at: v.completed_at.unwrap_or(now),
                details: v.details.clone(),
                error: v.error.clone().unwrap_or_default(),
            },
            "skipped" => PhaseState::Skipped {
                reason: v.details.clone(),
            },
            _ => PhaseState::Pending,
        };
        Phase {
            name: v.phase,
            state,
        }
    }
}

/// A job's overall status, as in the spec's `DeployJob.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Pending,
    Running,
    Completed,
    Failed,
    /// A host a stopped rollout never reached.
    Skipped,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "pending" => JobStatus::Pending,
            "running" => JobStatus::Running,
            "completed" => JobStatus::Completed,
            "skipped" => JobStatus::Skipped,
            _ => JobStatus::Failed,
        }
    }
}

/// What a job does: deploy new content, or bring back an existing release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Deploy,
    Rollback,
}

/// The spec's `RegistrationInfo`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Registration {
    pub droplet_id: i64,
    pub service_name: String,
    pub endpoint: String,
    #[serde(serialize_with = "crate::model::time_format::ser")]
    pub registered_at: DateTime<Utc>,
    #[schema(value_type = Object)]
    pub registry_response: serde_json::Value,
}

/// What an automatic rollback did.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct RollbackRecord {
    /// The release that was restored, if there was one.
    pub to_release: Option<String>,
    /// The release that failed and was taken down.
    pub from_release: String,
    pub success: bool,
    pub details: String,
}

/// A deploy (or rollback) job: the spec's `DeployJob` plus deployer's extras.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Job {
    pub deploy_job_id: String,
    pub kind: JobKind,
    pub service_name: String,
    pub service_path: String,
    pub status: JobStatus,
    pub droplet_id: Option<i64>,
    pub service_port: u16,
    pub service_url: Option<String>,
    pub deployment_method: String,
    /// The release this job deploys.
    pub release: Option<String>,
    /// The release that was current when the job started.
    pub previous_release: Option<String>,
    pub phases: Vec<PhaseView>,
    pub registration: Option<Registration>,
    pub rollback: Option<RollbackRecord>,
    #[serde(serialize_with = "crate::model::time_format::ser")]
    pub started_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::model::time_format::ser_opt")]
    pub completed_at: Option<DateTime<Utc>>,
    pub duration_seconds: Option<f64>,
    pub success: bool,
    pub error: Option<String>,
    /// Why it failed, as a stable word (`build`, `health`, ...).
    pub failure: Option<String>,
    /// Who ran it (user@host).
    pub actor: String,
    /// Counts from the Transfer phase.
    pub transfer: Option<TransferStats>,
    /// Per host, when the service is deployed to several hosts (the phases
    /// above then sum them up: failed if any host failed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostReport>,
}

/// One host's part of a job deployed to several hosts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct HostReport {
    pub host: String,
    /// 0 is the canary wave.
    pub wave: usize,
    pub status: JobStatus,
    pub release: Option<String>,
    pub previous_release: Option<String>,
    pub phases: Vec<PhaseView>,
    pub error: Option<String>,
    pub failure: Option<String>,
    pub rollback: Option<RollbackRecord>,
    pub transfer: Option<TransferStats>,
}

impl HostReport {
    pub fn pending(host: String, wave: usize) -> Self {
        HostReport {
            host,
            wave,
            status: JobStatus::Pending,
            release: None,
            previous_release: None,
            phases: PhaseName::ALL
                .iter()
                .map(|n| Phase::pending(*n).view())
                .collect(),
            error: None,
            failure: None,
            rollback: None,
            transfer: None,
        }
    }

    /// A host's report from the job its own pipeline kept.
    pub fn update_from(&mut self, job: &Job) {
        self.status = job.status;
        self.release = job.release.clone();
        self.previous_release = job.previous_release.clone();
        self.phases = job.phases.clone();
        self.error = job.error.clone();
        self.failure = job.failure.clone();
        self.rollback = job.rollback.clone();
        self.transfer = job.transfer.clone();
    }
}

/// Sums up one phase over several hosts: failed if any failed, running if
/// any runs, success when all succeeded, skipped when all skipped; timed
/// from the first start to the last end.
pub fn aggregate_phase(name: PhaseName, views: &[&PhaseView]) -> PhaseView {
    let any = |s: &str| views.iter().any(|v| v.status == s);
    let all = |s: &str| !views.is_empty() && views.iter().all(|v| v.status == s);
    let status = if any("failed") {
        "failed"
    } else if any("running") {
        "running"
    } else if all("skipped") {
        "skipped"
    } else if views
        .iter()
        .all(|v| v.status == "success" || v.status == "skipped")
        && any("success")
    {
        "success"
    } else if any("success") {
        "running"
    } else {
        "pending"
    };
    let started_at = views.iter().filter_map(|v| v.started_at).min();
    let completed_at = if matches!(status, "success" | "failed") {
        views.iter().filter_map(|v| v.completed_at).max()
    } else {
        None
    };
    let duration_ms = match (started_at, completed_at) {
        (Some(s), Some(c)) => Some((c - s).num_milliseconds()),
        _ => None,
    };
    let hosts = views.len();
    let ok = views.iter().filter(|v| v.status == "success").count();
    PhaseView {
        phase: name,
        status: status.to_string(),
        started_at,
        completed_at,
        duration_seconds: duration_ms.map(|ms| ms as f64 / 1000.0),
        duration_ms,
        details: format!("{ok} of {hosts} hosts succeeded"),
        error: views.iter().find_map(|v| v.error.clone()),
    }
}

/// What the Transfer phase moved.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct TransferStats {
    /// Files in the release.
    pub files: u64,
    /// Bytes in the release.
    pub bytes: u64,
    /// Files whose content was sent (all of them for a local copy).
    #[serde(default)]
    pub uploaded_files: u64,
    #[serde(default)]
    pub uploaded_bytes: u64,
    /// Unchanged files hard-linked from the previous release on the host.
    #[serde(default)]
    pub linked_files: u64,
}

/// A release's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseStatus {
    /// Being deployed.
    Pending,
    /// What `current` points at.
    Current,
    /// Was current once; kept for rollback.
    Previous,
    /// Never became current.
    Failed,
    /// Pruned: its files are gone.
    Removed,
}

impl ReleaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseStatus::Pending => "pending",
            ReleaseStatus::Current => "current",
            ReleaseStatus::Previous => "previous",
            ReleaseStatus::Failed => "failed",
            ReleaseStatus::Removed => "removed",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "pending" => ReleaseStatus::Pending,
            "current" => ReleaseStatus::Current,
            "previous" => ReleaseStatus::Previous,
            "removed" => ReleaseStatus::Removed,
            _ => ReleaseStatus::Failed,
        }
    }
}

/// One release of a service: a directory (and for docker, an image).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Release {
    pub service_name: String,
    pub id: String,
    pub status: ReleaseStatus,
    pub job_id: String,
    pub content_hash: String,
    #[serde(serialize_with = "crate::model::time_format::ser")]
    pub created_at: DateTime<Utc>,
    /// How to run it again (no secret values, only their names).
    pub spec: crate::plan::RunSpec,
}

/// One line of the audit trail.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct AuditEntry {
    #[serde(serialize_with = "crate::model::time_format::ser")]
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub service_name: String,
    pub job_id: Option<String>,
    pub outcome: String,
    pub duration_ms: Option<i64>,
    pub details: String,
}

impl Job {
    /// A job accepted but not started: every phase pending.
    pub fn pending(
        id: String,
        service_name: String,
        service_path: String,
        service_port: u16,
        method: String,
        droplet_id: Option<i64>,
        actor: String,
    ) -> Job {
        Job {
            deploy_job_id: id,
            kind: JobKind::Deploy,
            service_name,
            service_path,
            status: JobStatus::Pending,
            droplet_id,
            service_port,
            service_url: None,
            deployment_method: method,
            release: None,
            previous_release: None,
            phases: PhaseName::ALL
                .iter()
                .map(|n| Phase::pending(*n).view())
                .collect(),
            registration: None,
            rollback: None,
            started_at: chrono::Utc::now(),
            completed_at: None,
            duration_seconds: None,
            success: false,
            error: None,
            failure: None,
            actor,
            transfer: None,
            hosts: Vec::new(),
        }
    }
}
