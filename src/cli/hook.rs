//! `deployer hook install --repo BARE_REPO`: a pre-receive hook that deploys
//! each push to a branch and rejects the push when the deploy fails, showing
//! the pusher the phase lines.

use super::Context;
use crate::support::cmd::quote;
use crate::support::error::Failure;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Install the pre-receive hook in a bare repository.
    Install(InstallArgs),
}

#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// The bare repository pushes arrive in.
    #[arg(long, value_name = "BARE_REPO")]
    pub repo: PathBuf,
    /// The branch whose pushes deploy (default: `[git] branch`, else main).
    #[arg(long)]
    pub branch: Option<String>,
    /// The service's directory inside the repository (default: its top).
    #[arg(long, value_name = "SUBDIR")]
    pub path: Option<String>,
    /// Flags for `deployer deploy` (after --), such as --name and --port.
    #[arg(last = true)]
    pub deploy_args: Vec<String>,
}

pub async fn run(ctx: Context, args: Args) -> Result<i32, Failure> {
    let Action::Install(a) = args.action;
    let hooks = a.repo.join("hooks");
    if !a.repo.join("HEAD").is_file() || !hooks.is_dir() {
        return Err(Failure::invalid(format!(
            "{} is not a bare git repository",
            a.repo.display()
        )));
    }
    let branch = a
        .branch
        .or(ctx.config.git.branch.clone())
        .unwrap_or_else(|| "main".into());
    let script = hook_script(&ctx, &branch, a.path.as_deref(), &a.deploy_args)?;
    let path = hooks.join("pre-receive");
    std::fs::write(&path, script)
        .map_err(|e| Failure::internal(format!("writing {}: {e}", path.display())))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| Failure::internal(format!("making {} executable: {e}", path.display())))?;
    println!(
        "installed {}: pushes to {branch} deploy; a failed deploy rejects the push",
        path.display()
    );
    Ok(0)
}

/// The hook: for a push to `branch`, the pushed commit's tree is exported
/// and deployed with this deployer, its state directory and config.
fn hook_script(
    ctx: &Context,
    branch: &str,
    subdir: Option<&str>,
    deploy_args: &[String],
) -> Result<String, Failure> {
    let exe = std::env::current_exe()
        .map_err(|e| Failure::internal(format!("finding deployer itself: {e}")))?;
    let mut deployer = vec![
        quote(&exe.to_string_lossy()),
        "--state-dir".into(),
        quote(&ctx.state_dir.to_string_lossy()),
    ];
    if let Some(config) = &ctx.config_path {
        deployer.push("--config".into());
        deployer.push(quote(&config.to_string_lossy()));
    }
    let sub = subdir.unwrap_or("").trim_matches('/');
    // A git-driven release of the pushed commit: the job records its sha.
    let mut flags: Vec<String> = vec!["--git".into(), "\"$new\"".into()];
    if !sub.is_empty() {
        flags.push("--git-subdir".into());
        flags.push(quote(sub));
    }
    flags.extend(deploy_args.iter().map(|a| quote(a)));
    Ok(format!(
        "#!/bin/sh\n\
         # Installed by `deployer hook install`: a push to {branch} deploys the pushed\n\
         # commit; when the deploy fails, the push is rejected.\n\
         zero=0000000000000000000000000000000000000000\n\
         repo=$(pwd)\n\
         while read old new ref; do\n\
           [ \"$ref\" = refs/heads/{branch} ] || continue\n\
           [ \"$new\" = \"$zero\" ] && continue\n\
           echo \"deployer: deploying $new\"\n\
           if ! {deployer} deploy \"$repo\" {flags}; then\n\
             echo \"deployer: the deploy of $new failed; push rejected\" >&2\n\
             exit 1\n\
           fi\n\
         done\n",
        deployer = deployer.join(" "),
        flags = flags.join(" "),
    ))
}
