//! Register: tell the registry where the service answers, once every host
//! runs the release. A failure here leaves the healthy release running and
//! current.

use super::{Done, JobCx, JobStep, StepError};
use crate::input::plan::RegisterPlan;
use crate::model::*;
use crate::support::error::FailureKind;
use futures_util::future::BoxFuture;

pub(in crate::engine) struct Register;

impl JobStep for Register {
    fn phase(&self) -> Option<PhaseName> {
        Some(PhaseName::Register)
    }

    fn name(&self) -> &'static str {
        "register"
    }

    fn describe(&self, cx: &JobCx<'_>) -> String {
        match &cx.work.register {
            RegisterPlan::To {
                registry_url,
                droplet_id,
            } => format!("POST {registry_url}/register as droplet #{droplet_id}"),
            RegisterPlan::Skip { .. } => String::new(),
        }
    }

    fn skip(&self, cx: &JobCx<'_>) -> Option<String> {
        match &cx.work.register {
            RegisterPlan::Skip { reason } => Some(reason.clone()),
            RegisterPlan::To { .. } => None,
        }
    }

    fn run<'a>(&'a self, cx: &'a mut JobCx<'_>) -> BoxFuture<'a, Result<Done, StepError>> {
        Box::pin(async move {
            let RegisterPlan::To {
                registry_url,
                droplet_id,
            } = &cx.work.register
            else {
                return Ok(Done::quiet("not registered"));
            };
            let engine = cx.engine;
            let registered = crate::integrations::registry_client::register(
                &engine.http,
                registry_url,
                *droplet_id,
                &cx.work.service,
                &cx.work.service_url,
                engine.config.registry_token.as_ref().map(|t| t.expose()),
            )
            .await;
            match registered {
                Ok(reg) => {
                    cx.job.registration = Some(reg);
                    Ok(Done::shown(format!("Registered as Droplet #{droplet_id}")))
                }
                Err(e) => Err(StepError {
                    job_error: Some(format!(
                        "{e} (the service is deployed and healthy; only registration failed)"
                    )),
                    ..StepError::new(FailureKind::Register, e)
                }),
            }
        })
    }
}
