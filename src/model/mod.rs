//! The deploy domain's data: jobs, their six phases and steps, releases,
//! registrations and rollbacks. Status enums carry their data (a failed
//! phase has an error, a pending one has no start time); each has a separate
//! serde view for JSON and the store.

mod job;
mod phase;
mod release;

pub use job::*;
pub use phase::*;
pub use release::*;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Times in JSON: RFC 3339 in UTC with milliseconds, always, so every
/// timestamp deployer prints has the same shape.
pub mod time_format {
    use chrono::{DateTime, SecondsFormat, Utc};

    pub fn ser<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn ser_opt<S: serde::Serializer>(
        t: &Option<DateTime<Utc>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => ser(t, s),
            None => s.serialize_none(),
        }
    }
}

/// The spec's `RegistrationInfo`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Registration {
    pub droplet_id: i64,
    pub service_name: String,
    pub endpoint: String,
    #[serde(serialize_with = "crate::model::time_format::ser")]
    pub registered_at: DateTime<Utc>,
    #[schema(value_type = Object)]
    pub registry_response: serde_json::Value,
}

/// What an automatic rollback did.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct RollbackRecord {
    /// The release that was restored, if there was one.
    pub to_release: Option<String>,
    /// The release that failed and was taken down.
    pub from_release: String,
    pub success: bool,
    pub details: String,
}

/// One line of the audit trail.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct AuditEntry {
    #[serde(serialize_with = "crate::model::time_format::ser")]
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub service_name: String,
    pub job_id: Option<String>,
    pub outcome: String,
    pub duration_ms: Option<i64>,
    pub details: String,
}

/// What became of one notification.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Notification {
    /// `webhook`, `slack` or `telegram`.
    pub kind: String,
    /// The outcome announced: success, failure, rollback, rollback_failed.
    pub event: String,
    pub delivered: bool,
    pub attempts: u32,
    /// Why it was not delivered.
    pub error: Option<String>,
}
