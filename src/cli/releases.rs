//! `deployer releases NAME`: a service's releases and which is current.

use super::Context;
use crate::render::output::{print_json, print_table};
use crate::support::error::Failure;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The service.
    pub name: String,
}

pub async fn run(ctx: Context, args: Args) -> Result<i32, Failure> {
    crate::input::plan::validate_name(&args.name)?;
    let store = ctx.store().await?;
    let releases = store.releases(&args.name).await?;
    if releases.is_empty() {
        return Err(Failure::not_found(format!(
            "no releases of service '{}'",
            args.name
        )));
    }
    if ctx.json {
        print_json(&releases);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = releases
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.status.as_str().to_string(),
                r.spec.runtime.as_str().to_string(),
                r.spec.port.to_string(),
                r.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                r.job_id.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "RELEASE",
            "STATUS",
            "METHOD",
            "PORT",
            "CREATED (UTC)",
            "JOB",
        ],
        &rows,
    );
    Ok(0)
}
