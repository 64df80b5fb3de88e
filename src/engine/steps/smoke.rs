//! Smoke checks after health (the seed's smoke_test.sh): requests to the
//! new release, each with an expected status, a body substring or a JSON
//! field value, and a latency bound. A failure rolls back like a failed
//! health check (exit 4).

use super::{Done, Step, StepCx, StepError};
use crate::input::config::SmokeCheck;
use crate::model::*;
use crate::support::error::FailureKind;
use futures_util::future::BoxFuture;
use std::time::{Duration, Instant};

pub(in crate::engine) struct SmokeChecks;

impl Step for SmokeChecks {
    fn phase(&self) -> PhaseName {
        PhaseName::VerifyHealth
    }

    fn name(&self) -> &'static str {
        "smoke checks"
    }

    fn describe(&self, cx: &StepCx<'_>) -> String {
        let paths: Vec<&str> = cx.work.smoke.iter().map(|c| c.path.as_str()).collect();
        format!("GET {}", paths.join(", "))
    }

    fn skip(&self, cx: &StepCx<'_>) -> Option<String> {
        cx.work
            .smoke
            .is_empty()
            .then(|| "no smoke checks ([[smoke]] in service.toml)".into())
    }

    fn run<'a>(&'a self, cx: &'a mut StepCx<'_>) -> BoxFuture<'a, Result<Done, StepError>> {
        Box::pin(async move {
            let base = if cx.work.spec.health.from_target {
                None
            } else {
                Some(format!(
                    "http://{}:{}",
                    cx.site.health_host(),
                    cx.work.spec.port
                ))
            };
            let mut passed = Vec::new();
            for check in &cx.work.smoke {
                let answer = match &base {
                    Some(base) => over_http(&cx.engine.http, base, check).await,
                    None => on_host(cx, check).await,
                };
                let verdict = answer.and_then(|a| judge(check, &a));
                match verdict {
                    Ok(line) => passed.push(line),
                    Err(e) => {
                        return Err(StepError::new(
                            FailureKind::Health,
                            format!("smoke check {} failed: {e}", check.path),
                        ));
                    }
                }
            }
            Ok(Done {
                output: Some(passed.join("\n")),
                ..Done::shown(format!("{} smoke checks passed", passed.len()))
            })
        })
    }
}

/// What a smoke request got back.
struct Answer {
    status: u16,
    body: String,
    took: Duration,
}

const SMOKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a smoke check failed, saying what it saw.
#[derive(Debug, thiserror::Error)]
enum SmokeError {
    #[error("no answer: {0}")]
    NoAnswer(#[from] reqwest::Error),
    #[error("{0}")]
    OnHost(#[from] crate::support::cmd::ExecError),
    #[error("answered {got} (expected {want})")]
    Status { got: u16, want: u16 },
    #[error("the body does not contain {text:?} (it starts {start:?})")]
    Body { text: String, start: String },
    #[error("the body is not JSON, so it has no field {0:?}")]
    NotJson(String),
    #[error("the JSON has no field {0:?}")]
    NoField(String),
    #[error("{field} is {got} (expected {want})")]
    Field {
        field: String,
        got: serde_json::Value,
        want: serde_json::Value,
    },
    #[error("took {took} ms (at most {max} ms)")]
    Slow { took: u128, max: u64 },
}

async fn over_http(
    http: &reqwest::Client,
    base: &str,
    check: &SmokeCheck,
) -> Result<Answer, SmokeError> {
    let start = Instant::now();
    let resp = http
        .get(format!("{base}{}", check.path))
        .timeout(SMOKE_TIMEOUT)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    Ok(Answer {
        status,
        body,
        took: start.elapsed(),
    })
}

/// The request made with curl on the target (for ports only it can reach).
async fn on_host(cx: &StepCx<'_>, check: &SmokeCheck) -> Result<Answer, SmokeError> {
    use crate::support::cmd::{Cmd, Transport};
    let url = format!("http://127.0.0.1:{}{}", cx.work.spec.port, check.path);
    let cmd = Cmd::new("curl").args([
        "-s",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code} %{time_total}",
        &url,
    ]);
    let out = cx
        .site
        .host
        .exec(&cmd, SMOKE_TIMEOUT + Duration::from_secs(5))
        .await?;
    let (body, last) = out.stdout.rsplit_once('\n').unwrap_or(("", &out.stdout));
    let mut words = last.split_whitespace();
    let status = words.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let secs: f64 = words.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
    Ok(Answer {
        status,
        body: body.to_string(),
        took: Duration::from_secs_f64(secs),
    })
}

/// Whether an answer passes a check: a line saying so, or why not.
fn judge(check: &SmokeCheck, a: &Answer) -> Result<String, SmokeError> {
    let want = check.status.unwrap_or(200);
    if a.status != want {
        return Err(SmokeError::Status {
            got: a.status,
            want,
        });
    }
    if let Some(text) = &check.body_contains
        && !a.body.contains(text.as_str())
    {
        let start: String = a.body.chars().take(80).collect();
        let text = text.clone();
        return Err(SmokeError::Body { text, start });
    }
    if let Some(field) = &check.json_field {
        let value: serde_json::Value =
            serde_json::from_str(&a.body).map_err(|_| SmokeError::NotJson(field.clone()))?;
        let found = value.pointer(&format!("/{}", field.replace('.', "/")));
        match (&check.json_equals, found) {
            (_, None) => return Err(SmokeError::NoField(field.clone())),
            (Some(expected), Some(v)) if v != expected => {
                return Err(SmokeError::Field {
                    field: field.clone(),
                    got: v.clone(),
                    want: expected.clone(),
                });
            }
            _ => {}
        }
    }
    if let Some(max) = check.max_ms
        && a.took > Duration::from_millis(max)
    {
        let took = a.took.as_millis();
        return Err(SmokeError::Slow { took, max });
    }
    Ok(format!(
        "{}: {} in {} ms",
        check.path,
        a.status,
        a.took.as_millis()
    ))
}

#[cfg(test)]
mod judge_tests {
    use super::*;

    #[test]
    fn each_expectation_is_checked_and_says_what_it_saw() {
        let check = SmokeCheck {
            path: "/status".into(),
            status: Some(200),
            body_contains: Some("ready".into()),
            json_field: Some("db.state".into()),
            json_equals: Some(serde_json::json!("ok")),
            max_ms: Some(100),
        };
        let answer = |status, body: &str, ms| Answer {
            status,
            body: body.into(),
            took: Duration::from_millis(ms),
        };
        let good = r#"{"ready": true, "db": {"state": "ok"}}"#;
        assert!(judge(&check, &answer(200, good, 5)).is_ok());
        let err = |a| judge(&check, &a).unwrap_err().to_string();
        assert!(err(answer(503, good, 5)).contains("answered 503"));
        assert!(err(answer(200, r#"{"db": {"state": "ok"}}"#, 5)).contains("\"ready\""));
        assert!(
            err(answer(200, r#"{"ready": 1, "db": {"state": "down"}}"#, 5))
                .contains("db.state is \"down\"")
        );
        assert!(err(answer(200, good, 500)).contains("took 500 ms"));
    }
}
