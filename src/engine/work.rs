//! A job to run, as the engine's steps see it: what a [`Plan`] or a
//! rollback request becomes.

use crate::input::plan::{Plan, RegisterPlan, RolloutSpec};
use crate::model::*;
use crate::support::secret::Secret;
#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

/// Where a job's release comes from.
#[derive(Clone, Debug)]
pub(super) enum Source {
    /// New content to copy from a directory.
    Dir(PathBuf),
    /// A release that exists already (a rollback).
    Existing(String),
}

/// A job to run: what a [`Plan`] or a rollback request becomes.
#[derive(Clone, Debug)]
pub(super) struct Work {
    pub(super) kind: JobKind,
    pub(super) service: String,
    pub(super) service_path: String,
    pub(super) method: String,
    pub(super) spec: RunSpec,
    pub(super) secrets: Vec<(String, Secret)>,
    pub(super) droplet_id: Option<i64>,
    pub(super) register: RegisterPlan,
    pub(super) keep_releases: usize,
    pub(super) keep_days: Option<u64>,
    pub(super) service_url: String,
    pub(super) source: Source,
    pub(super) rollout: RolloutSpec,
    /// Set for a rollout, so every host gets the same release id.
    pub(super) release_id: Option<String>,
    pub(super) tests: crate::input::plan::TestsPlan,
    pub(super) smoke: Vec<crate::input::config::SmokeCheck>,
    /// Run against the new release before the old one stops.
    pub(super) migrate: Option<String>,
    /// The commit a git-driven release is made from.
    pub(super) commit: Option<crate::model::CommitInfo>,
    /// Each host's run of the steps fails and unwinds after this long.
    pub(super) timeout: Duration,
}

#[cfg(test)]
impl Work {
    /// A deploy of `src` as `service` with the example run spec (docker),
    /// for the engine's unit tests.
    pub(super) fn example(service: &str, src: &Path) -> Work {
        let mut spec = RunSpec::example(RuntimeKind::Docker);
        spec.secret_names.clear();
        Work {
            kind: JobKind::Deploy,
            service: service.into(),
            service_path: src.display().to_string(),
            method: "docker".into(),
            service_url: format!("http://127.0.0.1:{}", spec.port),
            spec,
            secrets: Vec::new(),
            droplet_id: None,
            register: RegisterPlan::Skip {
                reason: "no registry".into(),
            },
            keep_releases: 5,
            keep_days: None,
            source: Source::Dir(src.to_path_buf()),
            rollout: Default::default(),
            release_id: None,
            tests: Default::default(),
            smoke: Vec::new(),
            migrate: None,
            commit: None,
            timeout: Duration::from_secs(600),
        }
    }
}

impl Work {
    /// Hides the job's secret and environment values in what it writes.
    pub(super) fn redactor(&self) -> crate::support::secret::Redactor {
        crate::support::secret::Redactor::for_job(
            self.secrets.iter().map(|(_, s)| s),
            self.spec.env.values(),
        )
    }

    pub(super) fn from_plan(plan: Plan) -> Work {
        let (service_path, commit) = match &plan.git {
            Some(g) => (g.path.display().to_string(), Some(g.commit.clone())),
            None => (plan.source.display().to_string(), None),
        };
        Work {
            kind: JobKind::Deploy,
            service_url: plan.service_url(),
            service: plan.service_name,
            service_path,
            method: plan.spec.runtime.as_str().to_string(),
            spec: plan.spec,
            secrets: plan.secrets,
            droplet_id: plan.droplet_id,
            register: plan.register,
            keep_releases: plan.keep_releases,
            keep_days: plan.keep_days,
            source: Source::Dir(plan.source),
            rollout: plan.rollout,
            release_id: None,
            tests: plan.tests,
            smoke: plan.smoke,
            migrate: plan.migrate,
            commit,
            timeout: plan.timeout,
        }
    }
}
