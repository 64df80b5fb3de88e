//! `deployer history NAME`: a service's jobs, newest first.

use super::Context;
use crate::render::output::{format_ms, print_json, print_table};
use crate::support::error::Failure;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The service.
    pub name: String,
    /// How many jobs to show.
    #[arg(long, default_value_t = 20)]
    pub limit: i64,
}

pub async fn run(ctx: Context, args: Args) -> Result<i32, Failure> {
    crate::input::plan::validate_name(&args.name)?;
    let store = ctx.store().await?;
    let jobs = store.history(&args.name, args.limit).await?;
    if jobs.is_empty() {
        return Err(Failure::not_found(format!(
            "no deploys of service '{}'",
            args.name
        )));
    }
    if ctx.json {
        print_json(&jobs);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.deploy_job_id.clone(),
                j.kind.as_str().to_string(),
                match j.state.failure() {
                    Some(f) => format!("{} ({})", j.state.status().as_str(), f.as_str()),
                    None => j.state.status().as_str().to_string(),
                },
                j.release.clone().unwrap_or_else(|| "-".into()),
                j.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                j.duration_seconds()
                    .map(|s| format_ms((s * 1000.0) as i64))
                    .unwrap_or_default(),
                j.actor.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "JOB",
            "KIND",
            "STATUS",
            "RELEASE",
            "STARTED (UTC)",
            "DURATION",
            "BY",
        ],
        &rows,
    );
    Ok(0)
}
