//! `deployer completions SHELL` and `deployer man`: shell completions and a
//! man page, generated from the same clap definitions as the commands.

use super::Cli;
use crate::support::error::Failure;
use clap::CommandFactory;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// bash, zsh, fish, elvish or powershell.
    pub shell: clap_complete::Shell,
}

pub fn completions(args: Args) -> Result<i32, Failure> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "deployer", &mut std::io::stdout());
    Ok(0)
}

/// The man page (roff) on stdout: `deployer man > deployer.1`.
pub fn man() -> Result<i32, Failure> {
    clap_mangen::Man::new(Cli::command())
        .render(&mut std::io::stdout())
        .map_err(|e| Failure::internal(format!("writing the man page: {e}")))?;
    Ok(0)
}
