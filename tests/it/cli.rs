//! Shell habits: completions and a man page from the same definitions as
//! the commands.

use crate::common::*;

#[test]
fn completions_and_the_man_page_know_every_command() {
    let sb = Sandbox::new();
    for shell in ["bash", "zsh", "fish"] {
        let r = sb.run(&["completions", shell]);
        r.assert_code(0);
        for command in [
            "deploy", "rollback", "backups", "logs", "report", "monitor", "pipeline",
        ] {
            assert!(r.stdout.contains(command), "{shell} lacks {command}");
        }
    }
    // The bash completions load in a real bash and complete deployer.
    let file = sb.dir.path().join("deployer.bash");
    std::fs::write(&file, sb.run(&["completions", "bash"]).stdout.clone()).unwrap();
    let loaded = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p deployer && COMP_WORDS=(deployer mon) COMP_CWORD=1 \
             && _deployer deployer mon deployer && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            file.display()
        ))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&loaded.stdout);
    assert!(
        loaded.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    assert!(out.contains("-F _deployer deployer"), "{out}");
    assert!(
        out.lines().any(|l| l == "monitor"),
        "completes `mon` to monitor: {out}"
    );
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
