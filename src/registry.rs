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
    let url = format!("{registry_url}/register");
    let mut req = client.post(&url).timeout(Duration::from_secs(10));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .json(&json!({
            "droplet_id": droplet_id,
            "service_name": service_name,
            "endpoint": endpoint,
        }))
        .send()
        .await
        .map_err(|e| RegistryError::Unreachable {
            url: url.clone(),
            cause: root_cause(&e),
        })?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(RegistryError::Refused {
            url,
            status,
            body: body.chars().take(200).collect(),
        });
    }
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
    let url = format!("{registry_url}/events");
    let mut req = client.post(&url).timeout(Duration::from_secs(10));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .json(event)
        .send()
        .await
        .map_err(|e| RegistryError::Unreachable {
            url: url.clone(),
            cause: root_cause(&e),
        })?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(RegistryError::Refused {
            url,
            status,
            body: body.chars().take(200).collect(),
        });
    }
    Ok(())
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
