//! `deployer stop NAME`: stop a service's running release. It stays
//! deployed; `deployer rollback --to` or a new deploy starts a release again.

use super::Context;
use crate::support::error::Failure;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The service.
    pub name: String,
}

pub async fn run(ctx: Context, args: Args) -> Result<i32, Failure> {
    let engine = ctx.engine(0, &[])?;
    let stopped = engine.stop(&args.name).await;
    engine.close().await;
    let stopped = stopped?;
    if ctx.json {
        crate::render::output::print_json(
            &serde_json::json!({ "service_name": args.name, "stopped": stopped }),
        );
    } else {
        anstream::println!("{}: {stopped}", args.name);
    }
    Ok(0)
}
