//! `deployer deploy --server URL`: drives a deployer that runs `serve`
//! elsewhere. The request goes to `POST /deploy`; the job's events come
//! back over `GET /deploy/{id}/events` and are rendered exactly as a local
//! deploy renders them.

use super::Context;
use crate::engine::StreamEvent;
use crate::error::{Failure, FailureKind};
use crate::model::Job;
use crate::plan::DeployRequest;
use serde_json::Value;

pub async fn deploy(ctx: &Context, server: &str, req: &DeployRequest) -> Result<i32, Failure> {
    let base = server.trim_end_matches('/');
    let token = std::env::var("DEPLOYER_API_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| Failure::internal(e.to_string()))?;
    let unreachable = |e: reqwest::Error| {
        Failure::new(FailureKind::Unreachable, format!("deployer at {base}: {e}"))
    };
    let body = serde_json::json!({
        "service_path": req.service_path,
        "service_name": req.service_name,
        "droplet_id": req.droplet_id,
        "service_port": req.service_port,
        "deployment_method": req.deployment_method,
        "environment_vars": req.environment_vars,
        "auto_register": req.auto_register,
        "start": req.start,
        "build": req.build,
        "health_path": req.health_path,
        "secrets": req.secrets,
    });
    let mut post = client.post(format!("{base}/deploy")).json(&body);
    if let Some(t) = &token {
        post = post.bearer_auth(t);
    }
    let resp = post.send().await.map_err(unreachable)?;
    let status = resp.status();
    let answer: Value = resp.json().await.unwrap_or_default();
    if status.as_u16() != 202 {
        let msg = answer["error"]
            .as_str()
            .unwrap_or("request refused")
            .to_string();
        let kind = match status.as_u16() {
            400 | 401 | 413 => FailureKind::Invalid,
            404 => FailureKind::NotFound,
            409 => FailureKind::Locked,
            _ => FailureKind::Internal,
        };
        return Err(Failure::new(
            kind,
            format!("deployer at {base} answered {status}: {msg}"),
        ));
    }
    let id = answer["deploy_job_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let sink = ctx.sink();
    let mut resp = client
        .get(format!("{base}/deploy/{id}/events"))
        .send()
        .await
        .map_err(unreachable)?;
    let mut buf = String::new();
    let mut job: Option<Job> = None;
    while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find('\n') {
            let line: String = buf.drain(..=end).collect();
            let Some(data) = line.trim_end().strip_prefix("data: ") else {
                continue;
            };
            let Ok(event) = serde_json::from_str::<StreamEvent>(data) else {
                continue;
            };
            event.replay(sink.as_ref());
            if let StreamEvent::Done { job: j } = event {
                job = Some(*j);
            }
        }
    }
    match job {
        Some(job) => Ok(ctx.finish(&job)),
        None => Err(Failure::new(
            FailureKind::Unreachable,
            format!("deployer at {base} closed the event stream of job {id} before it finished"),
        )),
    }
}
