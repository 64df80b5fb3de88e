//! `deploy --dry-run`: Validation runs (it writes nothing), then each step
//! says what it would do on each host — the exact commands, secrets and
//! environment values masked — and nothing is changed.

use super::steps::{self, JobCx, StepCx};
use super::{Engine, Sink, Source, Work, validate};
use crate::input::plan::Plan;
use crate::model::Job;
use crate::store::Store;
use crate::support::error::Failure;

/// What one step would do on one host.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PlannedStep {
    pub host: String,
    pub phase: String,
    pub step: String,
    /// Why it would not run, when it would not.
    pub skip: Option<String>,
    /// What it would do.
    pub would: String,
}

/// The name the new release stands under in a dry run.
const NEW_RELEASE: &str = "NEW-RELEASE";

impl Engine {
    /// The plan, step by step and host by host; nothing changes.
    pub async fn dry_run(
        &self,
        mut plan: Plan,
        sink: &dyn Sink,
    ) -> Result<Vec<PlannedStep>, Failure> {
        let sites = validate::connect_all(&self.targets, &self.state_dir, &plan, sink).await?;
        let result = async {
            validate::all(&sites, &mut plan, sink).await?;
            // Earlier releases are read from the store when there is one;
            // none is made.
            let store = if self.state_dir.join("deployer.db").exists() {
                self.store().await?.clone()
            } else {
                Store::in_memory().await?
            };
            let work = Work::from_plan(plan);
            let (host_steps, job_steps) = steps::split(steps::deploy_steps());
            let mut planned = Vec::new();
            for site in &sites {
                let mut cx = StepCx::new(self, site, &store, sink, &work);
                cx.previous = site.host.current(&cx.dirs).await;
                if matches!(work.source, Source::Dir(_)) {
                    cx.release = Some(NEW_RELEASE.into());
                }
                for step in &host_steps {
                    planned.push(PlannedStep {
                        host: site.host.name(),
                        phase: step.phase().as_str().to_string(),
                        step: step.name().to_string(),
                        skip: step.skip(&cx),
                        would: cx.redactor.redact(&step.describe(&cx)),
                    });
                }
            }
            // Job steps run once, for all the hosts.
            let names: Vec<String> = sites.iter().map(|s| s.host.name()).collect();
            let job = Job::pending(
                String::new(),
                work.kind,
                work.service.clone(),
                self.actor.clone(),
            );
            let cx = JobCx::new(self, sink, &work, job);
            for step in &job_steps {
                planned.push(PlannedStep {
                    host: names.join(", "),
                    phase: step
                        .phase()
                        .map_or("after Register", |p| p.as_str())
                        .to_string(),
                    step: step.name().to_string(),
                    skip: step.skip(&cx),
                    would: cx.redactor.redact(&step.describe(&cx)),
                });
            }
            Ok(planned)
        }
        .await;
        for site in &sites {
            site.close().await;
        }
        result
    }
}
