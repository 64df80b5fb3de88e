//! `deployer status JOB`: one job with its phases.

use super::Context;
use crate::support::error::Failure;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job id (deploy-…).
    pub job: String,
}

pub async fn run(ctx: Context, args: Args) -> Result<i32, Failure> {
    let store = ctx.store().await?;
    let job = store
        .job(&args.job)
        .await?
        .ok_or_else(|| Failure::not_found(format!("no job '{}'", args.job)))?;
    if ctx.json {
        crate::render::output::print_json(&job);
    } else {
        crate::render::output::print_job(&job);
    }
    Ok(0)
}
