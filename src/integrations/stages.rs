//! The Sacred Loop's stages (`deployer pipeline run`): before the deploy,
//! each configured stage either calls an HTTP service (a verifier's `POST
//! /verify`, an auto-fixer's `POST /fix`), polled until it is done, or runs
//! a command on this machine. The first stage that fails stops the
//! pipeline with its output; nothing is transferred.

use crate::support::cmd::{Cmd, LocalTransport, Transport};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One `[[pipeline]]` entry (deployer.toml, or service.toml, which then
/// replaces deployer.toml's list).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// Letters, digits, '-' and '_'; later stages' bodies name its answer
    /// as `{NAME.FIELD}`.
    pub name: String,
    /// POST a JSON body here (http or https).
    pub url: Option<String>,
    /// Or run this with `sh -c` on this machine, in the service directory.
    pub command: Option<String>,
    /// The JSON body; strings may hold `{service_name}`, `{service_path}`,
    /// `{intent}`, `{droplet_id}` and earlier stages' `{NAME.FIELD}`.
    /// Default: those four, and the seed's `droplet_name`, `droplet_path`.
    pub body: Option<Value>,
    /// The name of a secret sent as `Authorization: Bearer`.
    pub token_secret: Option<String>,
    /// How long the stage may take, polling included (default 300).
    pub timeout_secs: Option<u64>,
    /// Seconds between polls of an unfinished answer (default 1).
    pub poll_secs: Option<u64>,
}

/// What a pipeline run is given.
#[derive(Clone, Debug, Default)]
pub struct Pipeline {
    pub intent: Option<String>,
    pub stages: Vec<Stage>,
    /// Bearer tokens by secret name.
    pub tokens: BTreeMap<String, crate::support::secret::Secret>,
}

/// A stage's outcome: its details (passed) or error (failed), and its
/// answer for later stages.
#[derive(Debug)]
pub struct Outcome {
    pub passed: bool,
    pub summary: String,
    pub answer: Value,
}

const MAX_TIMEOUT_SECS: u64 = 86_400;

impl Pipeline {
    /// The stages to run: the manifest's, else deployer.toml's; each
    /// checked.
    pub fn configured(
        manifest: &[Stage],
        config: &[Stage],
        intent: Option<String>,
    ) -> Result<Pipeline, crate::support::error::Failure> {
        let stages = if manifest.is_empty() {
            config
        } else {
            manifest
        };
        if stages.is_empty() {
            return Err(crate::support::error::Failure::invalid(
                "no pipeline stages: add [[pipeline]] entries (name, and url or \
                        command) to deployer.toml or service.toml",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for s in stages {
            let ok = !s.name.is_empty()
                && s.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                return Err(crate::support::error::Failure::invalid(format!(
                    "pipeline stage name {:?} must be letters, digits, '-' or '_'",
                    s.name
                )));
            }
            if !seen.insert(&s.name) {
                return Err(crate::support::error::Failure::invalid(format!(
                    "pipeline stage '{}' is listed twice",
                    s.name
                )));
            }
            match (&s.url, &s.command) {
                (Some(u), None) if u.starts_with("http://") || u.starts_with("https://") => {}
                (None, Some(c)) if !c.trim().is_empty() => {}
                (Some(u), None) => {
                    return Err(crate::support::error::Failure::invalid(format!(
                        "pipeline stage '{}': url '{u}' must start with http:// or https://",
                        s.name
                    )));
                }
                _ => {
                    return Err(crate::support::error::Failure::invalid(format!(
                        "pipeline stage '{}' needs exactly one of url and command",
                        s.name
                    )));
                }
            }
            if s.timeout_secs
                .is_some_and(|t| t == 0 || t > MAX_TIMEOUT_SECS)
            {
                return Err(crate::support::error::Failure::invalid(format!(
                    "pipeline stage '{}': timeout_secs must be 1 to {MAX_TIMEOUT_SECS}",
                    s.name
                )));
            }
        }
        Ok(Pipeline {
            intent,
            stages: stages.to_vec(),
            tokens: BTreeMap::new(),
        })
    }

    /// The secret names the stages send as tokens.
    pub fn token_names(&self) -> Vec<String> {
        self.stages
            .iter()
            .filter_map(|s| s.token_secret.clone())
            .collect()
    }
}

/// What a stage's body and command see.
pub struct StageInput<'a> {
    pub service_name: &'a str,
    pub service_path: &'a std::path::Path,
    pub intent: Option<&'a str>,
    pub droplet_id: Option<i64>,
}

impl StageInput<'_> {
    fn vars(&self, earlier: &BTreeMap<String, Value>) -> BTreeMap<String, String> {
        let mut vars = BTreeMap::from([
            ("service_name".to_string(), self.service_name.to_string()),
            (
                "service_path".to_string(),
                self.service_path.display().to_string(),
            ),
            (
                "intent".to_string(),
                self.intent.unwrap_or_default().to_string(),
            ),
            (
                "droplet_id".to_string(),
                self.droplet_id.map(|d| d.to_string()).unwrap_or_default(),
            ),
        ]);
        for (stage, answer) in earlier {
            if let Value::Object(map) = answer {
                for (k, v) in map {
                    let text = match v {
                        Value::String(s) => s.clone(),
                        v => v.to_string(),
                    };
                    vars.insert(format!("{stage}.{k}"), text);
                }
            }
        }
        vars
    }

    fn default_body(&self) -> Value {
        serde_json::json!({
            "service_name": "{service_name}",
            "service_path": "{service_path}",
            "intent": "{intent}",
            "droplet_id": self.droplet_id,
            "droplet_name": "{service_name}",
            "droplet_path": "{service_path}",
        })
    }
}

/// Puts the variables into every string of `template`; a placeholder no
/// variable answers is an error that names it.
/// A placeholder no variable answers.
#[derive(Debug, thiserror::Error)]
#[error("{{{name}}} names nothing (no earlier stage answered '{name}')")]
pub struct Unanswered {
    name: String,
}

fn fill(template: &Value, vars: &BTreeMap<String, String>) -> Result<Value, Unanswered> {
    Ok(match template {
        Value::String(s) => Value::String(fill_str(s, vars)?),
        Value::Array(a) => Value::Array(a.iter().map(|v| fill(v, vars)).collect::<Result<_, _>>()?),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| Ok((k.clone(), fill(v, vars)?)))
                .collect::<Result<_, Unanswered>>()?,
        ),
        v => v.clone(),
    })
}

/// A placeholder's braces (escaped, so no tool counting braces in this
/// file is thrown off).
const OPEN: char = '\u{7b}';
const CLOSE: char = '\u{7d}';

fn fill_str(s: &str, vars: &BTreeMap<String, String>) -> Result<String, Unanswered> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(open) = rest.find(OPEN) {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let name_end = after.find(CLOSE);
        let name = name_end.map(|e| &after[..e]).filter(|n| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        });
        match (name, name_end) {
            (Some(n), Some(e)) => {
                let v = vars.get(n).ok_or_else(|| Unanswered { name: n.into() })?;
                out.push_str(v);
                rest = &after[e + 1..];
            }
            _ => {
                out.push(OPEN);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Runs one stage.
pub async fn run_stage(
    stage: &Stage,
    input: &StageInput<'_>,
    earlier: &BTreeMap<String, Value>,
    tokens: &BTreeMap<String, crate::support::secret::Secret>,
    http: &reqwest::Client,
) -> Outcome {
    let vars = input.vars(earlier);
    let limit = Duration::from_secs(stage.timeout_secs.unwrap_or(300));
    let result = match (&stage.url, &stage.command) {
        (Some(url), _) => {
            let token = stage.token_secret.as_ref().and_then(|n| tokens.get(n));
            let body = stage.body.clone().unwrap_or_else(|| input.default_body());
            match fill(&body, &vars) {
                Ok(body) => call(http, url, &body, token, limit, stage).await,
                Err(e) => Err((e.to_string(), Value::Null)),
            }
        }
        (None, Some(command)) => run_command(command, input, &vars, limit).await,
        (None, None) => Err(("no url or command".into(), Value::Null)),
    };
    match result {
        Ok((summary, answer)) => Outcome {
            passed: true,
            summary,
            answer,
        },
        Err((summary, answer)) => Outcome {
            passed: false,
            summary,
            answer,
        },
    }
}

type StageResult = Result<(String, Value), (String, Value)>;

async fn run_command(
    command: &str,
    input: &StageInput<'_>,
    vars: &BTreeMap<String, String>,
    limit: Duration,
) -> StageResult {
    let cmd = Cmd::new("/bin/sh")
        .args(["-c", command])
        .cwd(input.service_path)
        .env("SERVICE_NAME", &vars["service_name"])
        .env("SERVICE_PATH", &vars["service_path"])
        .env("INTENT", &vars["intent"])
        .env("DROPLET_ID", &vars["droplet_id"]);
    let out = LocalTransport
        .exec(&cmd, limit)
        .await
        .map_err(|e| (e.to_string(), Value::Null))?;
    let text = format!("{}{}", out.stdout, out.stderr);
    let tail = crate::support::cmd::tail_lines(&text, 20);
    if out.success() {
        Ok((tail, Value::Null))
    } else {
        let how = out.code.map_or("was killed".to_string(), |c| {
            format!("exited with code {c}")
        });
        Err((format!("`{command}` {how}:\n{tail}"), Value::Null))
    }
}

/// How an answer reads.
enum Verdict {
    Passed,
    Failed,
    Pending,
}

fn verdict(code: u16, answer: &Value) -> Verdict {
    let status = answer
        .get("status")
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase);
    let pending = [
        "pending",
        "queued",
        "running",
        "accepted",
        "in_progress",
        "processing",
        "started",
    ];
    if status.as_deref().is_some_and(|s| pending.contains(&s)) {
        return Verdict::Pending;
    }
    let flag = ["passed", "success", "ok"]
        .iter()
        .find_map(|k| answer.get(*k).and_then(Value::as_bool));
    if let Some(passed) = flag {
        return if passed {
            Verdict::Passed
        } else {
            Verdict::Failed
        };
    }
    let good = [
        "passed",
        "pass",
        "success",
        "succeeded",
        "completed",
        "complete",
        "ok",
        "fixed",
        "done",
        "healthy",
    ];
    match status {
        Some(s) if good.contains(&s.as_str()) => Verdict::Passed,
        Some(_) => Verdict::Failed,
        None if code == 202 => Verdict::Pending,
        None => Verdict::Passed,
    }
}

/// What an answer says about itself, for the stage's record.
fn said(answer: &Value) -> String {
    let text = ["output", "message", "error", "errors", "issues", "details"]
        .iter()
        .find_map(|k| answer.get(*k))
        .map(|v| match v {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        })
        .unwrap_or_else(|| answer.to_string());
    crate::support::cmd::tail_lines(&text, 20)
}

/// Where to ask again about an unfinished answer: its `status_url` or
/// `poll_url`, its Location header, else `URL/{job_id}`.
fn poll_url(url: &str, answer: &Value, location: Option<&str>) -> Option<String> {
    let given = ["status_url", "poll_url"]
        .iter()
        .find_map(|k| answer.get(*k).and_then(Value::as_str))
        .or(location);
    if let Some(u) = given {
        let base = reqwest::Url::parse(url).ok()?;
        return base.join(u).ok().map(String::from);
    }
    let id = ["job_id", "id"]
        .iter()
        .find_map(|k| match answer.get(*k)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })?;
    Some(format!("{}/{id}", url.trim_end_matches('/')))
}

async fn call(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    token: Option<&crate::support::secret::Secret>,
    limit: Duration,
    stage: &Stage,
) -> StageResult {
    let started = Instant::now();
    let poll = Duration::from_secs(stage.poll_secs.unwrap_or(1).max(1));
    let mut req = http.post(url).json(body).timeout(limit);
    if let Some(t) = token {
        req = req.bearer_auth(t.expose());
    }
    let (mut code, mut answer, location) = send(req, url).await?;
    // What later stages may name: every field any answer gave (the first
    // answer's job id, the last one's verdict).
    let mut fields = serde_json::Map::new();
    let mut polls = 0;
    loop {
        if let Value::Object(o) = &answer {
            fields.extend(o.clone());
        }
        let answer_so_far = Value::Object(fields.clone());
        match verdict(code, &answer) {
            Verdict::Passed => {
                let polled = if polls > 0 {
                    format!(" after {polls} polls")
                } else {
                    String::new()
                };
                return Ok((format!("passed{polled}: {}", said(&answer)), answer_so_far));
            }
            Verdict::Failed => return Err((said(&answer), answer_so_far)),
            Verdict::Pending => {}
        }
        let Some(next) = poll_url(url, &answer, location.as_deref()) else {
            return Err((
                format!(
                    "{url} answered that it is not done ({}) but not where to ask again \
                     (status_url, a Location header or job_id)",
                    said(&answer)
                ),
                answer,
            ));
        };
        if started.elapsed() + poll > limit {
            return Err((
                format!(
                    "not done after {} s (timeout_secs); last answer: {}",
                    limit.as_secs(),
                    said(&answer)
                ),
                answer,
            ));
        }
        tokio::time::sleep(poll).await;
        polls += 1;
        let mut req = http
            .get(&next)
            .timeout(limit.saturating_sub(started.elapsed()));
        if let Some(t) = token {
            req = req.bearer_auth(t.expose());
        }
        (code, answer, _) = send(req, &next).await?;
    }
}

/// Sends a request: its status, JSON answer (a text answer as a string)
/// and Location header; a status other than 2xx is the stage's failure.
async fn send(
    req: reqwest::RequestBuilder,
    url: &str,
) -> Result<(u16, Value, Option<String>), (String, Value)> {
    let resp = req.send().await.map_err(|e| {
        (
            format!("{url}: {}", crate::hosting::health::describe(&e)),
            Value::Null,
        )
    })?;
    let code = resp.status().as_u16();
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = resp.text().await.unwrap_or_default();
    let answer = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if !(200..300).contains(&code) {
        return Err((format!("{url} answered {code}: {}", said(&answer)), answer));
    }
    Ok((code, answer, location))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_read_status_flags_and_codes() {
        use serde_json::json;
        let v = |code, a: Value| match verdict(code, &a) {
            Verdict::Passed => "passed",
            Verdict::Failed => "failed",
            Verdict::Pending => "pending",
        };
        assert_eq!(v(200, json!({"status": "passed"})), "passed");
        assert_eq!(
            v(200, json!({"status": "completed", "passed": false})),
            "failed"
        );
        assert_eq!(v(202, json!({"status": "running"})), "pending");
        assert_eq!(v(202, json!({"job_id": "x"})), "pending");
        assert_eq!(v(200, json!({"status": "failed"})), "failed");
        assert_eq!(v(200, json!({})), "passed");
    }

    #[test]
    fn bodies_name_earlier_answers_and_unknown_names_are_errors() {
        let earlier =
            BTreeMap::from([("verify".to_string(), serde_json::json!({"job_id": "ver-1"}))]);
        let input = StageInput {
            service_name: "api",
            service_path: std::path::Path::new("/srv/api"),
            intent: Some("ship it"),
            droplet_id: Some(3),
        };
        let vars = input.vars(&earlier);
        let body = serde_json::json!({"id": "{verify.job_id}", "why": "{intent} {x", "n": 1});
        assert_eq!(
            fill(&body, &vars).unwrap(),
            serde_json::json!({"id": "ver-1", "why": "ship it {x", "n": 1})
        );
        let err = fill(&serde_json::json!("{fix.id}"), &vars)
            .unwrap_err()
            .to_string();
        assert!(err.contains("{fix.id}"), "{err}");
    }
}
