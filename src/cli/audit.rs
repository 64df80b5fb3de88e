//! `deployer audit`: who did what, when, with what outcome.

use super::Context;
use crate::render::output::{format_ms, print_json, print_table};
use crate::support::error::Failure;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this service.
    #[arg(long)]
    pub service: Option<String>,
    /// How many lines (the newest).
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
}

pub async fn run(ctx: Context, args: Args) -> Result<i32, Failure> {
    let store = ctx.store().await?;
    let entries = store.audit_log(args.service.as_deref(), args.limit).await?;
    if ctx.json {
        print_json(&entries);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                e.actor.clone(),
                e.action.clone(),
                e.service_name.clone(),
                e.job_id.clone().unwrap_or_default(),
                e.outcome.clone(),
                e.duration_ms.map(format_ms).unwrap_or_default(),
                e.details.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "AT (UTC)", "BY", "ACTION", "SERVICE", "JOB", "OUTCOME", "DURATION", "DETAILS",
        ],
        &rows,
    );
    Ok(0)
}
