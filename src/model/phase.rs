//! The six phases of a job and the steps each is made of. A phase's state
//! carries its data (a failed phase has an error, a pending one has no start
//! time); [`PhaseView`] is its JSON and stored form, the spec's
//! `DeploymentPhase`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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

    /// How a job that fails in this phase fails, when its step does not
    /// say (a job out of time).
    pub fn failure_kind(self) -> crate::support::error::FailureKind {
        use crate::support::error::FailureKind as K;
        match self {
            PhaseName::Validation => K::Invalid,
            PhaseName::Transfer => K::Transfer,
            PhaseName::Build => K::Build,
            PhaseName::StartService => K::Start,
            PhaseName::VerifyHealth => K::Health,
            PhaseName::Register => K::Register,
        }
    }

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

    /// Where the phase is in [`PhaseName::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A phase's or a step's status word, as the spec writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PhaseStatus {
    Pending,
    Running,
    Success,
    Failed,
    Skipped,
}

impl PhaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseStatus::Pending => "pending",
            PhaseStatus::Running => "running",
            PhaseStatus::Success => "success",
            PhaseStatus::Failed => "failed",
            PhaseStatus::Skipped => "skipped",
        }
    }
}

/// Where a phase (or one of its steps) is, with the data each state has.
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

impl PhaseState {
    pub fn status(&self) -> PhaseStatus {
        match self {
            PhaseState::Pending => PhaseStatus::Pending,
            PhaseState::Running { .. } => PhaseStatus::Running,
            PhaseState::Success { .. } => PhaseStatus::Success,
            PhaseState::Failed { .. } => PhaseStatus::Failed,
            PhaseState::Skipped { .. } => PhaseStatus::Skipped,
        }
    }

    /// A phase whose steps all skip: skipped for the first one's reason.
    pub fn all_skipped(skips: &[Option<String>]) -> Option<Self> {
        if !skips.iter().all(Option::is_some) {
            return None;
        }
        let reason = skips.first().cloned().flatten()?;
        Some(PhaseState::Skipped { reason })
    }

    /// A finished state: success with `details`.
    pub fn succeeded(started_at: DateTime<Utc>, details: String) -> Self {
        PhaseState::Success {
            started_at,
            completed_at: Utc::now(),
            details,
        }
    }

    /// A finished state: failed with `error` (`details` say what failed).
    pub fn failed(started_at: DateTime<Utc>, details: String, error: String) -> Self {
        PhaseState::Failed {
            started_at,
            completed_at: Utc::now(),
            details,
            error,
        }
    }

    fn times(&self) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
        match self {
            PhaseState::Pending | PhaseState::Skipped { .. } => (None, None),
            PhaseState::Running { started_at } => (Some(*started_at), None),
            PhaseState::Success {
                started_at,
                completed_at,
                ..
            }
            | PhaseState::Failed {
                started_at,
                completed_at,
                ..
            } => (Some(*started_at), Some(*completed_at)),
        }
    }

    pub fn duration_ms(&self) -> Option<i64> {
        match self.times() {
            (Some(s), Some(c)) => Some((c - s).num_milliseconds()),
            _ => None,
        }
    }

    fn details(&self) -> String {
        match self {
            PhaseState::Pending | PhaseState::Running { .. } => String::new(),
            PhaseState::Success { details, .. } | PhaseState::Failed { details, .. } => {
                details.clone()
            }
            PhaseState::Skipped { reason } => reason.clone(),
        }
    }

    fn error(&self) -> Option<String> {
        match self {
            PhaseState::Failed { error, .. } => Some(error.clone()),
            _ => None,
        }
    }

    /// Rebuilds a state from its stored parts.
    fn from_parts(
        status: PhaseStatus,
        started_at: Option<DateTime<Utc>>,
        completed_at: Option<DateTime<Utc>>,
        details: String,
        error: Option<String>,
    ) -> Self {
        let now = Utc::now();
        match status {
            PhaseStatus::Pending => PhaseState::Pending,
            PhaseStatus::Running => PhaseState::Running {
                started_at: started_at.unwrap_or(now),
            },
            PhaseStatus::Success => PhaseState::Success {
                started_at: started_at.unwrap_or(now),
                completed_at: completed_at.unwrap_or(now),
                details,
            },
            PhaseStatus::Failed => PhaseState::Failed {
                started_at: started_at.unwrap_or(now),
                completed_at: completed_at.unwrap_or(now),
                details,
                error: error.unwrap_or_default(),
            },
            PhaseStatus::Skipped => PhaseState::Skipped { reason: details },
        }
    }
}

/// One step of a phase (Start Service = stop old, start new), as it ran.
#[derive(Clone, Debug, PartialEq)]
pub struct StepRecord {
    pub name: String,
    pub state: PhaseState,
}

impl StepRecord {
    /// A phase's steps before it runs: pending, or skipped and why.
    pub fn planned<'a>(
        names: impl Iterator<Item = &'a str>,
        skips: &[Option<String>],
    ) -> Vec<StepRecord> {
        names
            .zip(skips)
            .map(|(name, why)| StepRecord {
                name: name.to_string(),
                state: match why {
                    Some(reason) => PhaseState::Skipped {
                        reason: reason.clone(),
                    },
                    None => PhaseState::Pending,
                },
            })
            .collect()
    }
}

/// A step as JSON shows it, under its phase.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct StepView {
    pub step: String,
    pub status: PhaseStatus,
    #[serde(serialize_with = "crate::model::time_format::ser_opt")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::model::time_format::ser_opt")]
    pub completed_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    /// What the step did, or why it was skipped.
    pub details: String,
    /// Why it failed, with the tail of its output.
    pub error: Option<String>,
}

impl StepRecord {
    pub fn view(&self) -> StepView {
        let (started_at, completed_at) = self.state.times();
        StepView {
            step: self.name.clone(),
            status: self.state.status(),
            started_at,
            completed_at,
            duration_ms: self.state.duration_ms(),
            details: self.state.details(),
            error: self.state.error(),
        }
    }

    pub fn from_view(v: &StepView) -> Self {
        StepRecord {
            name: v.step.clone(),
            state: PhaseState::from_parts(
                v.status,
                v.started_at,
                v.completed_at,
                v.details.clone(),
                v.error.clone(),
            ),
        }
    }
}

/// One phase of a job, with the steps it ran.
#[derive(Clone, Debug, PartialEq)]
pub struct Phase {
    pub name: PhaseName,
    pub state: PhaseState,
    pub steps: Vec<StepRecord>,
}

/// A phase as the spec's `DeploymentPhase` shows it (JSON, store, API).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct PhaseView {
    pub phase: PhaseName,
    pub status: PhaseStatus,
    #[serde(serialize_with = "crate::model::time_format::ser_opt")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::model::time_format::ser_opt")]
    pub completed_at: Option<DateTime<Utc>>,
    /// Whole seconds would show 0 for most phases, so this is fractional.
    pub duration_seconds: Option<f64>,
    pub duration_ms: Option<i64>,
    pub details: String,
    pub error: Option<String>,
    /// The steps the phase ran, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepView>,
}

impl Phase {
    pub fn pending(name: PhaseName) -> Self {
        Phase {
            name,
            state: PhaseState::Pending,
            steps: Vec::new(),
        }
    }

    /// Every phase pending.
    pub fn all_pending() -> Vec<Phase> {
        PhaseName::ALL.iter().map(|n| Phase::pending(*n)).collect()
    }

    pub fn status(&self) -> PhaseStatus {
        self.state.status()
    }

    pub fn view(&self) -> PhaseView {
        let (started_at, completed_at) = self.state.times();
        let duration_ms = self.state.duration_ms();
        PhaseView {
            phase: self.name,
            status: self.status(),
            started_at,
            completed_at,
            duration_seconds: duration_ms.map(|ms| ms as f64 / 1000.0),
            duration_ms,
            details: self.state.details(),
            error: self.state.error(),
            steps: self.steps.iter().map(StepRecord::view).collect(),
        }
    }

    /// Rebuilds a phase from its stored view.
    pub fn from_view(v: &PhaseView) -> Self {
        Phase {
            name: v.phase,
            state: PhaseState::from_parts(
                v.status,
                v.started_at,
                v.completed_at,
                v.details.clone(),
                v.error.clone(),
            ),
            steps: v.steps.iter().map(StepRecord::from_view).collect(),
        }
    }
}

/// Sums up one phase over several hosts: failed if any failed, running if
/// any runs, success when all succeeded, skipped when all skipped; timed
/// from the first start to the last end.
pub fn aggregate_phase(name: PhaseName, phases: &[&Phase]) -> Phase {
    let any = |s: PhaseStatus| phases.iter().any(|p| p.status() == s);
    let all = |s: PhaseStatus| !phases.is_empty() && phases.iter().all(|p| p.status() == s);
    let ok = phases
        .iter()
        .filter(|p| p.status() == PhaseStatus::Success)
        .count();
    let details = format!("{ok} of {} hosts succeeded", phases.len());
    let started = phases.iter().filter_map(|p| p.state.times().0).min();
    let completed = phases.iter().filter_map(|p| p.state.times().1).max();
    let now = Utc::now();
    let state = if any(PhaseStatus::Failed) {
        PhaseState::Failed {
            started_at: started.unwrap_or(now),
            completed_at: completed.unwrap_or(now),
            details,
            error: phases
                .iter()
                .find_map(|p| p.state.error())
                .unwrap_or_default(),
        }
    } else if any(PhaseStatus::Running) {
        PhaseState::Running {
            started_at: started.unwrap_or(now),
        }
    } else if all(PhaseStatus::Skipped) {
        PhaseState::Skipped { reason: details }
    } else if ok > 0
        && phases
            .iter()
            .all(|p| matches!(p.status(), PhaseStatus::Success | PhaseStatus::Skipped))
    {
        PhaseState::Success {
            started_at: started.unwrap_or(now),
            completed_at: completed.unwrap_or(now),
            details,
        }
    } else if ok > 0 {
        PhaseState::Running {
            started_at: started.unwrap_or(now),
        }
    } else {
        PhaseState::Pending
    };
    Phase {
        name,
        state,
        steps: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_and_its_steps_round_trip_through_the_view() {
        let t = Utc::now();
        let phase = Phase {
            name: PhaseName::StartService,
            state: PhaseState::failed(t, "Start Service failed".into(), "boom".into()),
            steps: vec![
                StepRecord {
                    name: "stop old".into(),
                    state: PhaseState::succeeded(t, "stopped r1".into()),
                },
                StepRecord {
                    name: "start new".into(),
                    state: PhaseState::failed(t, String::new(), "boom".into()),
                },
            ],
        };
        let json = serde_json::to_value(phase.view()).unwrap();
        assert_eq!(json["status"], "failed");
        assert_eq!(json["steps"][1]["step"], "start new");
        assert_eq!(json["steps"][1]["error"], "boom");
        let back: PhaseView = serde_json::from_value(json.clone()).unwrap();
        let again = Phase::from_view(&back);
        assert_eq!(serde_json::to_value(again.view()).unwrap(), json);
    }

    #[test]
    fn hosts_sum_up_to_failed_if_any_failed() {
        let t = Utc::now();
        let ok = Phase {
            state: PhaseState::succeeded(t, "fine".into()),
            ..Phase::pending(PhaseName::Build)
        };
        let bad = Phase {
            state: PhaseState::failed(t, "Build failed".into(), "broke".into()),
            ..Phase::pending(PhaseName::Build)
        };
        let sum = aggregate_phase(PhaseName::Build, &[&ok, &bad]);
        assert_eq!(sum.status(), PhaseStatus::Failed);
        assert_eq!(sum.view().details, "1 of 2 hosts succeeded");
        assert_eq!(sum.view().error.as_deref(), Some("broke"));
        let sum = aggregate_phase(PhaseName::Build, &[&ok, &ok]);
        assert_eq!(sum.status(), PhaseStatus::Success);
    }
}
