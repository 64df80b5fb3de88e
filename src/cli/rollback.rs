//! `deployer rollback NAME [--to RELEASE]`: bring back an earlier release.

use super::Context;
use crate::support::error::Failure;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The service.
    pub name: String,
    /// The release to bring back (default: the one before current).
    #[arg(long, value_name = "RELEASE")]
    pub to: Option<String>,
    /// Wait this many seconds for a running deploy of the service to finish.
    /// (At most a day.)
    #[arg(long, default_value_t = 0, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub wait: u64,
}

pub async fn run(ctx: Context, args: Args) -> Result<i32, Failure> {
    let engine = ctx.engine(args.wait, &[])?;
    let sink = ctx.sink();
    let job = engine
        .rollback(&args.name, args.to.as_deref(), sink.as_ref())
        .await;
    engine.close().await;
    Ok(ctx.finish(&job?))
}
