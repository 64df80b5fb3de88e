//! Register: tell the registry where the service answers. A failure here
//! leaves the healthy release running and current.

use super::{Done, Step, StepCx, StepError};
use crate::engine::records;
use crate::error::FailureKind;
use crate::model::*;
use crate::plan::RegisterPlan;
use futures_util::future::BoxFuture;

pub(in crate::engine) struct Register;

impl Step for Register {
    fn phase(&self) -> PhaseName {
        PhaseName::Register
    }

    fn name(&self) -> &'static str {
        "register"
    }

    fn describe(&self, cx: &StepCx<'_>) -> String {
        match &cx.work.register {
            RegisterPlan::To {
                registry_url,
                droplet_id,
            } => format!("POST {registry_url}/register as droplet #{droplet_id}"),
            RegisterPlan::Skip { .. } => String::new(),
        }
    }

    fn skip(&self, cx: &StepCx<'_>) -> Option<String> {
        match &cx.work.register {
            RegisterPlan::Skip { reason } => Some(reason.clone()),
            RegisterPlan::To { .. } => None,
        }
    }

    fn run<'a>(&'a self, cx: &'a mut StepCx<'_>) -> BoxFuture<'a, Result<Done, StepError>> {
        Box::pin(async move {
            let RegisterPlan::To {
                registry_url,
                droplet_id,
            } = &cx.work.register
            else {
                return Ok(Done::quiet("not registered"));
            };
            match records::register(cx.engine, cx.work, registry_url, *droplet_id).await {
                Ok(reg) => {
                    cx.registration = Some(reg);
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
