//! Tests before a release may start (the seeds' deploy scripts): `[tests]
//! local` on this machine before anything is transferred, `[tests] server`
//! in the new release on each target after Build. A failure is exit 1; the
//! output's tail and the pass/fail counts stay with the job.

use super::{Done, Step, StepCx, StepError};
use crate::engine::Source;
use crate::model::*;
use crate::support::cmd::{Cmd, LocalTransport, Transport};
use crate::support::error::FailureKind;
use futures_util::future::BoxFuture;
use std::time::Duration;

/// How long a test command may run.
const TEST_TIMEOUT: Duration = Duration::from_secs(1800);

/// Lines of a test run's output kept with the job.
const TAIL_LINES: usize = 20;

pub(in crate::engine) struct LocalTests;

impl Step for LocalTests {
    fn phase(&self) -> PhaseName {
        PhaseName::Transfer
    }

    fn name(&self) -> &'static str {
        "local tests"
    }

    fn describe(&self, cx: &StepCx<'_>) -> String {
        format!(
            "on this machine: sh -c {:?}",
            cx.work.tests.local.as_deref().unwrap_or("")
        )
    }

    fn skip(&self, cx: &StepCx<'_>) -> Option<String> {
        skip_reason(cx, cx.work.tests.local.as_deref(), "local").or_else(|| {
            cx.existing()
                .then(|| "existing release: already tested".into())
        })
    }

    fn run<'a>(&'a self, cx: &'a mut StepCx<'_>) -> BoxFuture<'a, Result<Done, StepError>> {
        Box::pin(async move {
            let (Some(command), Source::Dir(src)) = (&cx.work.tests.local, &cx.work.source) else {
                return Ok(Done::quiet("no local tests"));
            };
            let mut cmd = Cmd::new("/bin/sh").args(["-c", command]).cwd(src);
            for (k, v) in &cx.work.spec.env {
                cmd = cmd.env(k, v);
            }
            cmd = cmd.env("SERVICE_NAME", &cx.work.service);
            if let Some(spec) = &cx.work.spec.python {
                let venv = local_venv(cx, src, spec).await?;
                let path = std::env::var("PATH").unwrap_or_default();
                cmd = cmd
                    .env("PATH", format!("{venv}/bin:{path}"))
                    .env("VIRTUAL_ENV", venv);
            }
            run_tests(&LocalTransport, &cmd, command, "local").await
        })
    }
}

/// A Python service's venv on this machine (kept under the state
/// directory, reused like a target's), for its local tests.
async fn local_venv(
    cx: &StepCx<'_>,
    src: &std::path::Path,
    spec: &PythonSpec,
) -> Result<String, StepError> {
    let dirs = cx.local_dirs();
    let (venvs, cache) = (dirs.root.join("venvs"), dirs.root.join("cache/pip"));
    let at = crate::hosting::python::VenvDirs {
        venvs: &venvs,
        cache: &cache,
    };
    let script = crate::hosting::python::deps_script(src, spec, &at, false);
    let out = LocalTransport
        .exec(
            &Cmd::new("sh").args(["-c", &script]),
            super::python::PIP_TIMEOUT,
        )
        .await
        .map_err(|e| StepError::new(FailureKind::Tests, e))?;
    match crate::hosting::python::parse_output(&out.stdout) {
        (_, Some(venv)) if out.success() => Ok(venv),
        _ => Err(StepError::new(
            FailureKind::Tests,
            format!(
                "installing {} on this machine for the local tests failed:\n{}",
                spec.deps,
                out.tail(12)
            ),
        )),
    }
}

pub(in crate::engine) struct ServerTests;

impl Step for ServerTests {
    fn phase(&self) -> PhaseName {
        PhaseName::Build
    }

    fn name(&self) -> &'static str {
        "server tests"
    }

    fn describe(&self, cx: &StepCx<'_>) -> String {
        format!(
            "on {}, in {}: sh -c {:?}",
            cx.site.host.name(),
            cx.new_release().dir().display(),
            cx.work.tests.server.as_deref().unwrap_or("")
        )
    }

    fn skip(&self, cx: &StepCx<'_>) -> Option<String> {
        skip_reason(cx, cx.work.tests.server.as_deref(), "server").or_else(|| {
            cx.existing()
                .then(|| "existing release: already tested".into())
        })
    }

    fn run<'a>(&'a self, cx: &'a mut StepCx<'_>) -> BoxFuture<'a, Result<Done, StepError>> {
        Box::pin(async move {
            let Some(command) = &cx.work.tests.server else {
                return Ok(Done::quiet("no server tests"));
            };
            let ctx = cx.new_release();
            let mut cmd = Cmd::new("/bin/sh").args(["-c", command]).cwd(ctx.dir());
            for (k, v) in ctx.base_env() {
                cmd = cmd.env(k, v);
            }
            run_tests(&*cx.site.host, &cmd, command, "server").await
        })
    }
}

fn skip_reason(cx: &StepCx<'_>, command: Option<&str>, which: &str) -> Option<String> {
    match command {
        None => Some(format!(
            "no {which} tests ([tests] {which} in service.toml)"
        )),
        Some(_) if cx.work.tests.skipped => Some("skipped with --skip-tests".into()),
        Some(_) => None,
    }
}

/// Runs a test command; its counts as the details, its tail with the job.
async fn run_tests(
    transport: &impl Transport,
    cmd: &Cmd,
    command: &str,
    which: &str,
) -> Result<Done, StepError> {
    let out = transport
        .exec(cmd, TEST_TIMEOUT)
        .await
        .map_err(|e| StepError::new(FailureKind::Tests, e))?;
    let text = format!("{}{}", out.stdout, out.stderr);
    let counts = summary(&text).unwrap_or_default();
    let counts = if counts.is_empty() {
        String::new()
    } else {
        format!(": {counts}")
    };
    let tail = crate::support::cmd::tail_lines(&text, TAIL_LINES);
    if out.success() {
        return Ok(Done {
            output: Some(tail),
            ..Done::shown(format!("{which} tests passed (`{command}`){counts}"))
        });
    }
    let code = out
        .code
        .map(|c| c.to_string())
        .unwrap_or_else(|| "signal".into());
    Err(StepError::new(
        FailureKind::Tests,
        format!("{which} tests failed (`{command}` exited with code {code}){counts}:\n{tail}"),
    ))
}

/// The pass/fail counts of a test run, from the closing lines pytest,
/// `cargo test` and `go test` print.
pub fn summary(output: &str) -> Option<String> {
    let lines: Vec<&str> = output.lines().map(str::trim).collect();
    // pytest: "===== 5 passed, 1 failed in 0.12s =====", or with -q
    // "5 passed, 1 warning in 0.12s"
    if let Some(l) = lines.iter().rev().find(|l| {
        let bare = l.trim_matches('=').trim();
        (l.starts_with('=') || bare.starts_with(|c: char| c.is_ascii_digit()))
            && (bare.contains(" passed") || bare.contains(" failed"))
            && bare.contains(" in ")
    }) {
        return Some(format!("{} (pytest)", l.trim_matches('=').trim()));
    }
    // cargo test: "test result: ok. 5 passed; 0 failed; ..." (one per binary)
    let (mut passed, mut failed, mut seen) = (0u64, 0u64, false);
    for l in lines.iter().filter_map(|l| l.strip_prefix("test result: ")) {
        seen = true;
        for part in l.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let n: u64 = n.parse().unwrap_or(0);
            match what {
                "passed" => passed += n,
                "failed" => failed += n,
                _ => {}
            }
        }
    }
    if seen {
        return Some(format!("{passed} passed, {failed} failed (cargo test)"));
    }
    // go test: "ok  \tpkg\t0.01s" and "FAIL\tpkg\t0.01s" per package
    let ok = lines
        .iter()
        .filter(|l| l.starts_with("ok ") || l.starts_with("ok\t"))
        .count();
    let fail = lines
        .iter()
        .filter(|l| l.starts_with("FAIL\t") || l.starts_with("FAIL "))
        .count();
    (ok + fail > 0).then(|| format!("{ok} packages ok, {fail} failed (go test)"))
}

#[cfg(test)]
mod summary_tests {
    use super::summary;

    #[test]
    fn counts_from_the_usual_test_runners() {
        assert_eq!(
            summary("....F\n=========== 4 passed, 1 failed in 0.12s ===========\n").as_deref(),
            Some("4 passed, 1 failed in 0.12s (pytest)")
        );
        assert_eq!(
            summary(".\n1 passed, 1 warning in 0.22s\n").as_deref(),
            Some("1 passed, 1 warning in 0.22s (pytest)"),
            "pytest -q"
        );
        let cargo = "test result: ok. 5 passed; 0 failed; 0 ignored\n\
                     test result: FAILED. 2 passed; 1 failed; 0 ignored\n";
        assert_eq!(
            summary(cargo).as_deref(),
            Some("7 passed, 1 failed (cargo test)")
        );
        let go = "ok  \texample.com/a\t0.01s\nFAIL\texample.com/b\t0.02s\nFAIL\n";
        assert_eq!(
            summary(go).as_deref(),
            Some("1 packages ok, 1 failed (go test)")
        );
        assert_eq!(summary("all good\n"), None);
    }
}
