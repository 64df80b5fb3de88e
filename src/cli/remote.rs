//! `deployer deploy --server URL`: drives a deployer that runs `serve`
//! elsewhere. The request goes to `POST /deploy`; the job's events come
//! back over `GET /deploy/{id}/events` and are rendered exactly as a local
//! deploy renders them.

use super::Context;
use crate::api::guard::{TOKEN_FILE, read_token_file};
use crate::engine::{Sink, StreamEvent};
use crate::input::plan::DeployRequest;
use crate::model::Job;
use crate::support::error::{Failure, FailureKind};
use crate::support::secret::Secret;
use serde_json::Value;

/// `pipeline` is a pipeline run's intent (`POST /pipeline`); `None` for a
/// plain deploy (`POST /deploy`).
pub async fn deploy(
    ctx: &Context,
    server: &str,
    req: &DeployRequest,
    pipeline: Option<Option<String>>,
) -> Result<i32, Failure> {
    // The token: DEPLOYER_API_TOKEN, else the one a server on this machine
    // keeps in the state directory.
    let token = match std::env::var("DEPLOYER_API_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
    {
        Some(t) => Some(Secret::new(t)),
        None => read_token_file(&ctx.state_dir.join(TOKEN_FILE))?,
    };
    let remote = Remote {
        base: server.trim_end_matches('/').to_string(),
        client: reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(Failure::internal)?,
        token,
    };
    let id = remote.submit(req, pipeline).await?;
    let sink = ctx.sink();
    match remote.follow(&id, sink.as_ref()).await? {
        Some(job) => Ok(ctx.finish(&job)),
        None => Err(Failure::new(
            FailureKind::Unreachable,
            format!(
                "deployer at {} closed the event stream of job {id} before it finished",
                remote.base
            ),
        )),
    }
}

/// A deployer serving the HTTP API.
struct Remote {
    base: String,
    client: reqwest::Client,
    token: Option<Secret>,
}

impl Remote {
    fn unreachable(&self, e: reqwest::Error) -> Failure {
        Failure::new(
            FailureKind::Unreachable,
            format!("deployer at {}: {e}", self.base),
        )
    }

    /// `POST /deploy`; the accepted job's id.
    async fn submit(
        &self,
        req: &DeployRequest,
        pipeline: Option<Option<String>>,
    ) -> Result<String, Failure> {
        let mut body = serde_json::to_value(req).map_err(Failure::internal)?;
        let path = match pipeline {
            Some(intent) => {
                body["intent"] = intent.into();
                "pipeline"
            }
            None => "deploy",
        };
        let mut post = self
            .client
            .post(format!("{}/{path}", self.base))
            .json(&body);
        if let Some(t) = &self.token {
            post = post.bearer_auth(t.expose());
        }
        let resp = post.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let answer: Value = resp.json().await.unwrap_or_default();
        if status.as_u16() == 202 {
            return Ok(answer["deploy_job_id"]
                .as_str()
                .unwrap_or_default()
                .to_string());
        }
        let msg = answer["error"].as_str().unwrap_or("request refused");
        let kind = match status.as_u16() {
            400 | 401 | 413 => FailureKind::Invalid,
            404 => FailureKind::NotFound,
            409 => FailureKind::Locked,
            _ => FailureKind::Internal,
        };
        Err(Failure::new(
            kind,
            format!("deployer at {} answered {status}: {msg}", self.base),
        ))
    }

    /// Renders the job's event stream; the finished job, if the stream
    /// got that far.
    async fn follow(&self, id: &str, sink: &dyn Sink) -> Result<Option<Job>, Failure> {
        let mut resp = self
            .client
            .get(format!("{}/deploy/{id}/events", self.base))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let mut buf = String::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.unreachable(e))? {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find('\n') {
                let line: String = buf.drain(..=end).collect();
                let Some(data) = line.trim_end().strip_prefix("data: ") else {
                    continue;
                };
                let Ok(event) = serde_json::from_str::<StreamEvent>(data) else {
                    continue;
                };
                event.replay(sink);
                if let StreamEvent::Done { job } = event {
                    return Ok(Some(*job));
                }
            }
        }
        Ok(None)
    }
}
