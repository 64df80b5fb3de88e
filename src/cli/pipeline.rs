//! `deployer pipeline run PATH|NAME [--intent TEXT]`: the Sacred Loop. The
//! configured stages (`[[pipeline]]`: a verifier, an auto-fixer, commands)
//! run first; the first that fails stops it (exit 17) before anything is
//! transferred; then the deploy and the registration, as `deploy` does.

use super::{Context, deploy};
use crate::support::error::Failure;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the stages, then deploy and register (every flag of `deploy`).
    Run(Box<RunArgs>),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// What the change is for (the seed's intent), given to each stage.
    #[arg(long, value_name = "TEXT")]
    pub intent: Option<String>,
    #[command(flatten)]
    pub deploy: deploy::Args,
}

pub async fn run(ctx: Context, args: Args) -> Result<i32, Failure> {
    match args.command {
        Command::Run(a) => {
            if a.deploy.dry_run {
                return Err(Failure::invalid(
                    "pipeline run has no --dry-run: its stages call other services",
                ));
            }
            let a = *a;
            let mut args = a.deploy;
            if !args.path.exists() {
                // A service's name: its last deploy's directory.
                let name = args.path.to_string_lossy().into_owned();
                if crate::input::plan::validate_name(&name).is_ok()
                    && let Ok(store) = ctx.store().await
                    && let Some(job) = store.history(&name, 1).await?.into_iter().next()
                {
                    args.path = job.service_path.into();
                    args.name.get_or_insert(name);
                }
            }
            deploy::run_with(ctx, args, Some(a.intent)).await
        }
    }
}
