//! The built-in registry's table: the seed's Registry API, served by
//! `deployer serve` when no external registry is configured.

use super::{Store, StoreError, ctx, parse_ts, ts};
use chrono::{DateTime, Utc};
use sqlx::Row;

impl Store {
    /// Registers (or re-registers) a service in the built-in registry.
    pub async fn register(&self, e: &RegistryEntry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO registry (service_name, droplet_id, endpoint, registered_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (service_name) DO UPDATE SET droplet_id = excluded.droplet_id,
                endpoint = excluded.endpoint, registered_at = excluded.registered_at",
        )
        .bind(&e.service_name)
        .bind(e.droplet_id)
        .bind(&e.endpoint)
        .bind(ts(&e.registered_at))
        .execute(&self.pool)
        .await
        .map_err(ctx(format!("registering {}", e.service_name)))?;
        Ok(())
    }

    pub async fn registry(&self) -> Result<Vec<RegistryEntry>, StoreError> {
        let rows = sqlx::query("SELECT * FROM registry ORDER BY service_name")
            .fetch_all(&self.pool)
            .await
            .map_err(ctx("reading the registry"))?;
        Ok(rows
            .into_iter()
            .map(|r| RegistryEntry {
                service_name: r.get("service_name"),
                droplet_id: r.get("droplet_id"),
                endpoint: r.get("endpoint"),
                registered_at: parse_ts(&r.get::<String, _>("registered_at")),
            })
            .collect())
    }

    /// Removes a service from the registry; false when it was not there.
    pub async fn deregister(&self, service: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM registry WHERE service_name = $1")
            .bind(service)
            .execute(&self.pool)
            .await
            .map_err(ctx(format!("deregistering {service}")))?;
        Ok(r.rows_affected() > 0)
    }
}

/// One service in the built-in registry (the seed's Registry API).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
pub struct RegistryEntry {
    pub service_name: String,
    pub droplet_id: i64,
    pub endpoint: String,
    #[serde(serialize_with = "crate::model::time_format::ser")]
    pub registered_at: DateTime<Utc>,
}
