//! A job: one deploy or rollback of a service, on one host or several. Its
//! state is one enum that carries its data ([`JobState`]); [`JobView`] is
//! the spec's `DeployJob` as JSON and the store show it.

use super::{Phase, PhaseView, Registration, RollbackRecord, TransferStats};
use crate::support::error::FailureKind;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a job does: deploy new content, or bring back an existing release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Deploy,
    Rollback,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Deploy => "deploy",
            JobKind::Rollback => "rollback",
        }
    }
}

/// Where a job (or one host's part of it) is.
#[derive(Clone, Debug, PartialEq)]
pub enum JobState {
    /// Accepted, waiting for a worker or the service's lock.
    Pending,
    Running,
    Completed {
        completed_at: DateTime<Utc>,
    },
    Failed {
        kind: FailureKind,
        error: String,
        /// What the automatic rollback did, when one ran.
        rollback: Option<RollbackRecord>,
        completed_at: DateTime<Utc>,
    },
    /// A host that a stopped rollout never reached.
    Skipped,
}

impl JobState {
    pub fn failed(kind: FailureKind, error: impl Into<String>) -> Self {
        JobState::Failed {
            kind,
            error: error.into(),
            rollback: None,
            completed_at: Utc::now(),
        }
    }

    pub fn status(&self) -> JobStatus {
        match self {
            JobState::Pending => JobStatus::Pending,
            JobState::Running => JobStatus::Running,
            JobState::Completed { .. } => JobStatus::Completed,
            JobState::Failed { .. } => JobStatus::Failed,
            JobState::Skipped => JobStatus::Skipped,
        }
    }

    pub fn succeeded(&self) -> bool {
        matches!(self, JobState::Completed { .. })
    }

    /// Why it failed; `None` unless it did.
    pub fn failure(&self) -> Option<FailureKind> {
        match self {
            JobState::Failed { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    pub fn error(&self) -> Option<&str> {
        match self {
            JobState::Failed { error, .. } => Some(error),
            _ => None,
        }
    }

    pub fn rollback(&self) -> Option<&RollbackRecord> {
        match self {
            JobState::Failed { rollback, .. } => rollback.as_ref(),
            _ => None,
        }
    }

    pub fn completed_at(&self) -> Option<DateTime<Utc>> {
        match self {
            JobState::Completed { completed_at } | JobState::Failed { completed_at, .. } => {
                Some(*completed_at)
            }
            _ => None,
        }
    }

    /// The process exit code for a finished job: 0, or its failure's code.
    pub fn exit_code(&self) -> i32 {
        match self {
            JobState::Completed { .. } => 0,
            JobState::Failed { kind, .. } => kind.exit_code(),
            _ => FailureKind::Internal.exit_code(),
        }
    }

    /// Rebuilds a state from the view's flat fields.
    fn from_parts(
        status: JobStatus,
        failure: Option<&str>,
        error: Option<String>,
        rollback: Option<RollbackRecord>,
        completed_at: Option<DateTime<Utc>>,
    ) -> Self {
        let completed_at = completed_at.unwrap_or_else(Utc::now);
        match status {
            JobStatus::Pending => JobState::Pending,
            JobStatus::Running => JobState::Running,
            JobStatus::Completed => JobState::Completed { completed_at },
            JobStatus::Skipped => JobState::Skipped,
            JobStatus::Failed => JobState::Failed {
                kind: failure
                    .and_then(FailureKind::parse)
                    .unwrap_or(FailureKind::Internal),
                error: error.unwrap_or_default(),
                rollback,
                completed_at,
            },
        }
    }
}

/// A job's status word, as in the spec's `DeployJob.status`.
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

/// A deploy (or rollback) job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(into = "JobView", from = "JobView")]
pub struct Job {
    pub deploy_job_id: String,
    pub kind: JobKind,
    pub service_name: String,
    pub service_path: String,
    pub state: JobState,
    pub droplet_id: Option<i64>,
    pub service_port: u16,
    pub service_url: Option<String>,
    pub deployment_method: String,
    /// The release this job deploys.
    pub release: Option<String>,
    /// The release that was current when the job started.
    pub previous_release: Option<String>,
    pub phases: Vec<Phase>,
    pub registration: Option<Registration>,
    pub started_at: DateTime<Utc>,
    /// Who ran it (user@host).
    pub actor: String,
    /// Counts from the Transfer phase.
    pub transfer: Option<TransferStats>,
    /// Per host, when the service is deployed to several hosts (the phases
    /// above then sum them up: failed if any host failed).
    pub hosts: Vec<HostReport>,
    /// Where the finished job was announced, and whether it arrived.
    pub notifications: Vec<super::Notification>,
    /// The commit deployed, for a git-driven release.
    pub commit: Option<crate::model::CommitInfo>,
}

impl Job {
    /// A job accepted but not started: every phase pending.
    pub fn pending(id: String, kind: JobKind, service_name: String, actor: String) -> Job {
        Job {
            deploy_job_id: id,
            kind,
            service_name,
            service_path: String::new(),
            state: JobState::Pending,
            droplet_id: None,
            service_port: 0,
            service_url: None,
            deployment_method: String::new(),
            release: None,
            previous_release: None,
            phases: Phase::all_pending(),
            registration: None,
            started_at: Utc::now(),
            actor,
            transfer: None,
            hosts: Vec::new(),
            notifications: Vec::new(),
            commit: None,
        }
    }

    pub fn succeeded(&self) -> bool {
        self.state.succeeded()
    }

    pub fn duration_seconds(&self) -> Option<f64> {
        self.state
            .completed_at()
            .map(|c| (c - self.started_at).num_milliseconds() as f64 / 1000.0)
    }

    pub fn phase(&self, name: super::PhaseName) -> &Phase {
        &self.phases[name.index()]
    }

    pub fn view(&self) -> JobView {
        JobView {
            deploy_job_id: self.deploy_job_id.clone(),
            kind: self.kind,
            service_name: self.service_name.clone(),
            service_path: self.service_path.clone(),
            status: self.state.status(),
            droplet_id: self.droplet_id,
            service_port: self.service_port,
            service_url: self.service_url.clone(),
            deployment_method: self.deployment_method.clone(),
            release: self.release.clone(),
            previous_release: self.previous_release.clone(),
            phases: self.phases.iter().map(Phase::view).collect(),
            registration: self.registration.clone(),
            rollback: self.state.rollback().cloned(),
            started_at: self.started_at,
            completed_at: self.state.completed_at(),
            duration_seconds: self.duration_seconds(),
            success: self.state.succeeded(),
            error: self.state.error().map(str::to_string),
            failure: self.state.failure().map(|k| k.as_str().to_string()),
            actor: self.actor.clone(),
            transfer: self.transfer.clone(),
            hosts: self.hosts.iter().map(HostReport::view).collect(),
            notifications: self.notifications.clone(),
            commit: self.commit.clone(),
        }
    }
}

impl From<Job> for JobView {
    fn from(job: Job) -> Self {
        job.view()
    }
}

impl From<JobView> for Job {
    fn from(v: JobView) -> Self {
        Job {
            state: JobState::from_parts(
                v.status,
                v.failure.as_deref(),
                v.error,
                v.rollback,
                v.completed_at,
            ),
            deploy_job_id: v.deploy_job_id,
            kind: v.kind,
            service_name: v.service_name,
            service_path: v.service_path,
            droplet_id: v.droplet_id,
            service_port: v.service_port,
            service_url: v.service_url,
            deployment_method: v.deployment_method,
            release: v.release,
            previous_release: v.previous_release,
            phases: v.phases.iter().map(Phase::from_view).collect(),
            registration: v.registration,
            started_at: v.started_at,
            actor: v.actor,
            transfer: v.transfer,
            hosts: v.hosts.into_iter().map(HostReport::from).collect(),
            notifications: v.notifications,
            commit: v.commit,
        }
    }
}

/// A job as JSON shows it: the spec's `DeployJob` plus deployer's extras.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[schema(as = Job)]
pub struct JobView {
    pub deploy_job_id: String,
    pub kind: JobKind,
    pub service_name: String,
    pub service_path: String,
    pub status: JobStatus,
    pub droplet_id: Option<i64>,
    pub service_port: u16,
    pub service_url: Option<String>,
    pub deployment_method: String,
    pub release: Option<String>,
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
    pub actor: String,
    pub transfer: Option<TransferStats>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostReportView>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<super::Notification>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<crate::model::CommitInfo>,
}

/// One host's part of a job deployed to several hosts.
#[derive(Clone, Debug, PartialEq)]
pub struct HostReport {
    pub host: String,
    /// 0 is the canary wave.
    pub wave: usize,
    pub state: JobState,
    pub release: Option<String>,
    pub previous_release: Option<String>,
    pub phases: Vec<Phase>,
    pub transfer: Option<TransferStats>,
    /// A host that succeeded but was taken back because a later host of its
    /// wave (or a later wave) failed.
    pub reverted: Option<RollbackRecord>,
}

impl HostReport {
    pub fn pending(host: String, wave: usize) -> Self {
        HostReport {
            host,
            wave,
            state: JobState::Pending,
            release: None,
            previous_release: None,
            phases: Phase::all_pending(),
            transfer: None,
            reverted: None,
        }
    }

    /// A host's report from the job its own run kept.
    pub fn update_from(&mut self, job: &Job) {
        self.state = job.state.clone();
        self.release = job.release.clone();
        self.previous_release = job.previous_release.clone();
        self.phases = job.phases.clone();
        self.transfer = job.transfer.clone();
        // A phase no host step belongs to (Register) runs once for the
        // job, never on a host.
        if job.state.succeeded() {
            for phase in self.phases.iter_mut() {
                if phase.status() == super::PhaseStatus::Pending {
                    phase.state = super::PhaseState::Skipped {
                        reason: "once for the job, after every host".into(),
                    };
                }
            }
        }
    }

    /// Whether the host runs the job's release at the end.
    pub fn deployed(&self) -> bool {
        self.state.succeeded() && self.reverted.is_none()
    }

    pub fn view(&self) -> HostReportView {
        HostReportView {
            host: self.host.clone(),
            wave: self.wave,
            status: self.state.status(),
            release: self.release.clone(),
            previous_release: self.previous_release.clone(),
            phases: self.phases.iter().map(Phase::view).collect(),
            error: self.state.error().map(str::to_string),
            failure: self.state.failure().map(|k| k.as_str().to_string()),
            rollback: self
                .reverted
                .clone()
                .or_else(|| self.state.rollback().cloned()),
            transfer: self.transfer.clone(),
        }
    }
}

impl From<HostReportView> for HostReport {
    fn from(v: HostReportView) -> Self {
        let state = JobState::from_parts(
            v.status,
            v.failure.as_deref(),
            v.error,
            v.rollback.clone(),
            None,
        );
        let reverted = v.rollback.filter(|_| state.succeeded());
        HostReport {
            host: v.host,
            wave: v.wave,
            state,
            release: v.release,
            previous_release: v.previous_release,
            phases: v.phases.iter().map(Phase::from_view).collect(),
            transfer: v.transfer,
            reverted,
        }
    }
}

/// A host's part as JSON shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[schema(as = HostReport)]
pub struct HostReportView {
    pub host: String,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_job_round_trips_through_its_view() {
        let mut job = Job::pending(
            "deploy-1".into(),
            JobKind::Deploy,
            "web".into(),
            "me".into(),
        );
        job.state = JobState::Failed {
            kind: FailureKind::Health,
            error: "never healthy".into(),
            rollback: Some(RollbackRecord {
                to_release: Some("r1".into()),
                from_release: "r2".into(),
                success: true,
                details: "rolled back".into(),
            }),
            completed_at: job.started_at + chrono::Duration::milliseconds(1500),
        };
        let json = serde_json::to_value(&job).unwrap();
        assert_eq!(json["status"], "failed");
        assert_eq!(json["success"], false);
        assert_eq!(json["failure"], "health");
        assert_eq!(json["error"], "never healthy");
        assert_eq!(json["rollback"]["to_release"], "r1");
        assert_eq!(json["duration_seconds"], 1.5);
        let back: Job = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back.state.exit_code(), 4);
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
    }
}
