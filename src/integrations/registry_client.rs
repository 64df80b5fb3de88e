//! The Registry client: the seed's Registry API, `POST /register` with the
//! droplet id, the service name and its endpoint.

use crate::model::Registration;
use serde_json::json;
use std::time::Duration;

/// Why a registration did not go through.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry at {url} unreachable: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("registry at {url} answered {status}: {body}")]
    Refused {
        url: String,
        status: reqwest::StatusCode,
        body: String,
    },
}

/// Registers a service; returns the registration with the registry's answer.
pub async fn register(
    client: &reqwest::Client,
    registry_url: &str,
    droplet_id: i64,
    service_name: &str,
    endpoint: &str,
    token: Option<&str>,
) -> Result<Registration, RegistryError> {
    let request = json!({
        "droplet_id": droplet_id,
        "service_name": service_name,
        "endpoint": endpoint,
    });
    let body = post(client, &format!("{registry_url}/register"), &request, token).await?;
    Ok(Registration {
        droplet_id,
        service_name: service_name.to_string(),
        endpoint: endpoint.to_string(),
        registered_at: chrono::Utc::now(),
        registry_response: serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
    })
}

/// Tells the registry something happened to a service (the seed's
/// "Update Registry with rollback event"): `POST /events`.
pub async fn report_event(
    client: &reqwest::Client,
    registry_url: &str,
    event: &serde_json::Value,
    token: Option<&str>,
) -> Result<(), RegistryError> {
    post(client, &format!("{registry_url}/events"), event, token)
        .await
        .map(|_| ())
}

/// POSTs JSON to the registry; its answer's body, or why there is none.
async fn post(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    token: Option<&str>,
) -> Result<String, RegistryError> {
    let mut req = client.post(url).timeout(Duration::from_secs(10));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .json(body)
        .send()
        .await
        .map_err(|e| RegistryError::Unreachable {
            url: url.to_string(),
            cause: root_cause(&e),
        })?;
    let status = resp.status();
    let answer = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(RegistryError::Refused {
            url: url.to_string(),
            status,
            body: answer.chars().take(200).collect(),
        });
    }
    Ok(answer)
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
