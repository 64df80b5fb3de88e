//! The `deployer` binary: parse, run, map the outcome to an exit code.

use clap::Parser;
use deployer::cli::Cli;
use deployer::support::error::FailureKind;

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Help and version are not errors; bad usage is invalid input.
            std::process::exit(if e.use_stderr() {
                FailureKind::Invalid.exit_code()
            } else {
                0
            });
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let json = cli.json;
    let code = runtime.block_on(async {
        match cli.run().await {
            Ok(code) => code,
            Err(failure) => {
                if json {
                    // Machines get the failure on stdout too, as JSON.
                    println!(
                        "{}",
                        serde_json::json!({
                            "error": failure.message,
                            "failure": failure.kind.as_str(),
                            "field": failure.field,
                            "exit_code": failure.kind.exit_code(),
                        })
                    );
                }
                anstream::eprintln!(
                    "{}error:{} {}",
                    anstyle::AnsiColor::Red.on_default().bold().render(),
                    anstyle::Reset.render(),
                    deployer::render::output::printable(&failure.message)
                );
                failure.kind.exit_code()
            }
        }
    });
    std::process::exit(code);
}
