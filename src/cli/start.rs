//! `deployer start NAME` and `deployer restart NAME`: the current release
//! up again, health-checked.

use super::Context;
use crate::support::error::Failure;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The service.
    pub name: String,
}

/// `deployer pause NAME [--message TEXT]`.
#[derive(Debug, clap::Args)]
pub struct PauseArgs {
    /// The service.
    pub name: String,
    /// The maintenance page's text.
    #[arg(long, value_name = "TEXT")]
    pub message: Option<String>,
}

pub async fn pause(ctx: Context, args: PauseArgs) -> Result<i32, Failure> {
    let engine = ctx.engine(0, &[])?;
    let done = engine.pause(&args.name, args.message.as_deref()).await;
    engine.close().await;
    say(&ctx, &args.name, done?)
}

pub async fn resume(ctx: Context, args: Args) -> Result<i32, Failure> {
    let engine = ctx.engine(0, &[])?;
    let done = engine.resume(&args.name).await;
    engine.close().await;
    say(&ctx, &args.name, done?)
}

fn say(ctx: &Context, name: &str, done: String) -> Result<i32, Failure> {
    if ctx.json {
        crate::render::output::print_json(
            &serde_json::json!({ "service_name": name, "details": done }),
        );
    } else {
        anstream::println!("{name}: {done}");
    }
    Ok(0)
}

pub async fn start(ctx: Context, args: Args) -> Result<i32, Failure> {
    run(ctx, args, false).await
}

pub async fn restart(ctx: Context, args: Args) -> Result<i32, Failure> {
    run(ctx, args, true).await
}

async fn run(ctx: Context, args: Args, restart: bool) -> Result<i32, Failure> {
    let engine = ctx.engine(0, &[])?;
    let done = if restart {
        engine.restart(&args.name).await
    } else {
        engine.start(&args.name).await
    };
    engine.close().await;
    let done = done?;
    if ctx.json {
        crate::render::output::print_json(
            &serde_json::json!({ "service_name": args.name, "details": done }),
        );
    } else {
        anstream::println!("{}: {done}", args.name);
    }
    Ok(0)
}
