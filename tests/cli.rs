//! Shell habits: completions and a man page from the same definitions as
//! the commands.

mod common;
use common::*;

#[test]
fn completions_and_the_man_page_know_every_command() {
    let sb = Sandbox::new();
    for shell in ["bash", "zsh", "fish"] {
        let r = sb.run(&["completions", shell]);
        r.assert_code(0);
        for command in ["deploy", "rollback", "backups", "logs", "report"] {
            assert!(r.stdout.contains(command), "{shell} lacks {command}");
        }
    }
    sb.run(&["completions", "tcsh"]).assert_code(10);
    let man = sb.run(&["man"]);
    man.assert_code(0);
    assert!(
        man.stdout.starts_with(".ie") || man.stdout.contains(".TH deployer"),
        "{}",
        &man.stdout[..200.min(man.stdout.len())]
    );
    assert!(
        man.stdout.contains("Exit codes"),
        "the man page lists the exit codes"
    );
    assert!(!sb.state_dir().exists(), "nothing written");
}
