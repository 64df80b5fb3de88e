//! Build, for a Python service: its dependencies in a venv the release
//! links as `.venv` (`python.rs` has the rules: one venv per requirements,
//! reused while they do not change; the wheelhouse when the service ships
//! one). A failed install fails Build with pip's own words; the running
//! release is untouched.

use super::{Done, Step, StepCx, StepError};
use crate::model::*;
use crate::support::cmd::Cmd;
use crate::support::error::FailureKind;
use futures_util::future::BoxFuture;
use std::time::{Duration, Instant};

/// How long installing dependencies may take.
pub(in crate::engine) const PIP_TIMEOUT: Duration = Duration::from_secs(900);

pub(in crate::engine) struct PythonDeps;

impl Step for PythonDeps {
    fn phase(&self) -> PhaseName {
        PhaseName::Build
    }

    fn name(&self) -> &'static str {
        "python dependencies"
    }

    fn describe(&self, cx: &StepCx<'_>) -> String {
        match &cx.work.spec.python {
            Some(p) => format!(
                "on {}: a venv under {} for {} (reused while it does not change), linked as .venv",
                cx.site.host.name(),
                cx.dirs.root.join("venvs").display(),
                p.deps
            ),
            None => String::new(),
        }
    }

    fn skip(&self, cx: &StepCx<'_>) -> Option<String> {
        if cx.existing() {
            Some("existing release: already built".into())
        } else if cx.work.spec.python.is_none() {
            Some("not a Python service".into())
        } else if !cx.work.spec.runtime.on_host() {
            Some("in a container: the Dockerfile installs them".into())
        } else {
            None
        }
    }

    fn run<'a>(&'a self, cx: &'a mut StepCx<'_>) -> BoxFuture<'a, Result<Done, StepError>> {
        Box::pin(async move {
            let Some(spec) = cx.work.spec.python.clone() else {
                return Ok(Done::quiet("not a Python service"));
            };
            let started = Instant::now();
            let dir = cx.new_release().dir();
            let venvs = cx.dirs.root.join("venvs");
            let cache = cx.dirs.root.join("cache/pip");
            let at = crate::hosting::python::VenvDirs {
                venvs: &venvs,
                cache: &cache,
            };
            let script = crate::hosting::python::deps_script(&dir, &spec, &at, true);
            let out = cx
                .site
                .host
                .run(&Cmd::new("sh").args(["-c", &script]), PIP_TIMEOUT)
                .await
                .map_err(|e| StepError::new(FailureKind::Build, e))?;
            if !out.success() {
                return Err(StepError::new(
                    FailureKind::Build,
                    format!("installing {} failed:\n{}", spec.deps, out.tail(12)),
                ));
            }
            let (how, _) = crate::hosting::python::parse_output(&out.stdout);
            Ok(Done::shown(format!(
                "Python dependencies ({}) {how} in {:.1} s",
                spec.deps,
                started.elapsed().as_secs_f64()
            )))
        })
    }
}
