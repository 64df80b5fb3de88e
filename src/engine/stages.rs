//! `pipeline run`: the stages before the deploy (a verifier, an
//! auto-fixer, a command), recorded as steps of the job's Validation
//! phase. The first that fails stops the job before Transfer.

use super::{Engine, Event, Sink, records};
use crate::input::plan::Plan;
use crate::model::*;
use crate::support::error::{Failure, FailureKind};
use chrono::Utc;
use std::collections::BTreeMap;

impl Engine {
    /// Runs the plan's stages, if it has any; each becomes a step of
    /// `validation`, and a failed one fails it.
    pub(super) async fn run_stages(
        &self,
        plan: &Plan,
        validation: &mut Phase,
        sink: &dyn Sink,
    ) -> Result<(), Failure> {
        let Some(p) = &plan.pipeline else {
            return Ok(());
        };
        let path = plan.git.as_ref().map_or(&plan.source, |g| &g.path);
        let input = crate::integrations::stages::StageInput {
            service_name: &plan.service_name,
            service_path: path,
            intent: p.intent.as_deref(),
            droplet_id: plan.droplet_id,
        };
        let redactor = crate::support::secret::Redactor::for_job(
            plan.secrets.iter().map(|(_, s)| s).chain(p.tokens.values()),
            plan.spec.env.values(),
        );
        let mut earlier = BTreeMap::new();
        for stage in &p.stages {
            let started = Utc::now();
            let out = crate::integrations::stages::run_stage(
                stage, &input, &earlier, &p.tokens, &self.http,
            )
            .await;
            let summary = redactor.redact(&out.summary);
            let name = format!("stage {}", stage.name);
            let state = match out.passed {
                true => PhaseState::succeeded(started, summary.clone()),
                false => PhaseState::failed(started, format!("{name} failed"), summary.clone()),
            };
            validation.steps.push(StepRecord { name, state });
            if !out.passed {
                let error = format!("stage {} failed: {summary}", stage.name);
                let since = match &validation.state {
                    PhaseState::Success { started_at, .. } => *started_at,
                    _ => started,
                };
                validation.state =
                    PhaseState::failed(since, "Validation failed".into(), error.clone());
                sink.event(&Event::PhaseFinished(&validation.view()));
                return Err(Failure::new(FailureKind::Pipeline, error));
            }
            let took = (Utc::now() - started).num_milliseconds();
            sink.event(&Event::Note(&format!(
                "stage {} passed in {took} ms",
                stage.name
            )));
            earlier.insert(stage.name.clone(), out.answer);
        }
        if let PhaseState::Success { details, .. } = &mut validation.state {
            let names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
            details.push_str(&format!("; stages passed: {}", names.join(", ")));
        }
        Ok(())
    }

    /// A job as it is before it runs: pending, every phase pending.
    pub(super) fn pending_job(&self, plan: &Plan, job_id: String) -> Job {
        let mut job = Job::pending(
            job_id,
            JobKind::Deploy,
            plan.service_name.clone(),
            self.actor.clone(),
        );
        job.service_path = plan.source.display().to_string();
        job.service_port = plan.spec.port;
        job.deployment_method = plan.method.as_str().to_string();
        job.droplet_id = plan.droplet_id;
        job
    }

    /// Records a job a failed stage stopped: Validation as it ran, the
    /// other phases not run; it ends like every job (`finish.rs`), so it
    /// is audited, announced and reported too.
    pub(super) async fn record_stopped(
        &self,
        plan: Plan,
        job_id: String,
        accepted: bool,
        validation: &Phase,
        f: &Failure,
        sink: &dyn Sink,
    ) -> Result<Job, Failure> {
        let started = std::time::Instant::now();
        let mut job = self.pending_job(&plan, job_id);
        records::refused(&mut job, Some(validation.view()), f);
        job.state = JobState::Running;
        for phase in job.phases.iter_mut().skip(1) {
            phase.state = PhaseState::Skipped {
                reason: "not run: a pipeline stage failed".into(),
            };
        }
        let store = self.store().await?;
        if accepted {
            store.save_job(&job).await?;
        } else {
            store.insert_job(&job).await?;
        }
        let book = records::JobBook {
            store: store.clone(),
            parent: tokio::sync::Mutex::new(job),
            sink,
        };
        let stopped = super::rollout::HostsFailed {
            kind: f.kind,
            error: f.message.clone(),
            rollback: None,
        };
        let (_, job_steps) = super::steps::split(super::steps::deploy_steps());
        let work = super::Work::from_plan(plan);
        Ok(self
            .finish(&book, &work, Err(stopped), &job_steps, started)
            .await)
    }
}
