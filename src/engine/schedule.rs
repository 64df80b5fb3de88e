//! `serve`'s schedules: the daily snapshot of `[api] snapshot_at` (`HH:MM`,
//! UTC) as a cron pattern (croner), and what each run did, in the audit
//! log — a run that could not start too.

use super::Engine;
use crate::support::error::Failure;
use chrono::{DateTime, Utc};
use std::str::FromStr;

/// A time of day, every day, in UTC.
pub struct Daily {
    cron: croner::Cron,
    at: String,
}

impl Daily {
    /// `HH:MM` (UTC), as `[api] snapshot_at` says it.
    pub fn parse(at: &str) -> Result<Daily, Failure> {
        let bad = || Failure::invalid(format!("[api] snapshot_at {at:?}: expected HH:MM (UTC)"));
        let (h, m) = at.split_once(':').ok_or_else(bad)?;
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 2 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(h) || !digits(m) {
            return Err(bad());
        }
        let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if h > 23 || m > 59 {
            return Err(bad());
        }
        let cron = croner::Cron::from_str(&format!("{m} {h} * * *")).map_err(|_| bad())?;
        Ok(Daily {
            cron,
            at: format!("{h:02}:{m:02}"),
        })
    }

    /// The first time after `now` the schedule fires.
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&now, false).ok()
    }

    pub fn at(&self) -> &str {
        &self.at
    }

    /// Runs `job` at each of the schedule's times, for as long as the
    /// process runs (`serve`'s daily snapshot).
    pub async fn every_day<F, R>(self, mut job: F)
    where
        F: FnMut() -> R,
        R: std::future::Future<Output = ()>,
    {
        while let Some(next) = self.next_after(Utc::now()) {
            let wait = (next - Utc::now()).to_std().unwrap_or_default();
            tokio::time::sleep(wait).await;
            job().await;
        }
    }
}

impl Engine {
    /// One scheduled snapshot: each service's backup is audited by
    /// [`Engine::snapshot`]; a snapshot that could not run at all is
    /// audited here.
    pub async fn scheduled_snapshot(&self) {
        let started = std::time::Instant::now();
        if let Err(f) = self.snapshot().await {
            let entry = crate::model::AuditEntry {
                details: format!("the daily snapshot could not run: {}", f.message),
                ..super::records::audit_entry(&self.actor, "snapshot", "*", None, "failed", started)
            };
            if let Ok(store) = self.store().await {
                let _ = store.audit(&entry).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Daily;
    use chrono::TimeZone;

    #[test]
    fn a_daily_time_is_hh_mm_and_fires_next_at_that_time() {
        let d = Daily::parse("03:00").unwrap();
        assert_eq!(d.at(), "03:00");
        let now = chrono::Utc.with_ymd_and_hms(2026, 12, 2, 15, 0, 0).unwrap();
        let next = d.next_after(now).unwrap();
        assert_eq!(
            next,
            chrono::Utc.with_ymd_and_hms(2026, 12, 3, 3, 0, 0).unwrap()
        );
        let early = chrono::Utc.with_ymd_and_hms(2026, 12, 2, 2, 59, 0).unwrap();
        assert_eq!(
            Daily::parse("3:00").unwrap().next_after(early).unwrap(),
            chrono::Utc.with_ymd_and_hms(2026, 12, 2, 3, 0, 0).unwrap()
        );
        assert!(Daily::parse("23:59").is_ok());
        for bad in [
            "3", "24:00", "12:60", "noon", "-1:00", "1:2:3", "*/5:00", "",
        ] {
            assert!(Daily::parse(bad).is_err(), "{bad}");
        }
    }
}
