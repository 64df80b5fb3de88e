//! `deployer report JOB`: a job's report, as text, JSON or Markdown.

use super::Context;
use crate::support::error::Failure;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Markdown,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job id (deploy-…).
    pub job: String,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

pub async fn run(ctx: Context, args: Args) -> Result<i32, Failure> {
    let store = ctx.store().await?;
    let job = store
        .job(&args.job)
        .await?
        .ok_or_else(|| Failure::not_found(format!("no job '{}'", args.job)))?;
    match (args.format, ctx.json) {
        (Format::Json, _) | (_, true) => crate::render::output::print_json(&job),
        (Format::Markdown, _) => print!("{}", crate::render::report::markdown(&job)),
        (Format::Text, _) => anstream::print!("{}", crate::render::report::text(&job)),
    }
    Ok(0)
}
