//! Env vars reach the service; a secret's value never appears in any output,
//! log file, database row or audit line.

use crate::common::*;

const SECRET: &str = "sk-live-4f9a1c7e2b8d-do-not-print";

fn assert_nowhere(sb: &Sandbox, outputs: &[&Run]) {
    for r in outputs {
        assert!(
            !r.stdout.contains(SECRET) && !r.stderr.contains(SECRET),
            "secret in output:\n{}\n{}",
            r.stdout,
            r.stderr
        );
    }
    let files = files_under(&sb.state_dir());
    assert!(
        files.iter().any(|f| f.ends_with("deployer.db")),
        "the database was searched"
    );
    assert!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "log")),
        "service logs were searched"
    );
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "secret found in {}",
            f.display()
        );
    }
}

#[test]
fn env_and_secrets_reach_the_service_and_the_secret_is_never_printed() {
    let sb = Sandbox::new();
    let name = &sb.name("sec");
    let port = free_port();
    let env = [("API_KEY", SECRET)];
    let v1 = sb.service("hello", "v1");
    let ok = sb.deploy_env(
        &v1,
        name,
        port,
        "process",
        &["--env", "MODE=blue", "--secret", "API_KEY"],
        &env,
    );
    ok.assert_code(0);
    assert_eq!(http_get(port, "/env/MODE").unwrap().1, "blue");
    assert_eq!(
        http_get(port, "/env/API_KEY").unwrap().1,
        SECRET,
        "the secret reached the service"
    );
    assert_eq!(
        http_get(port, "/env/GREETING").unwrap().1,
        "hello from deployer",
        "manifest env"
    );

    // A failing deploy with the secret, and its rollback (which restarts
    // the previous release with the secret again).
    let bad = sb.service("broken/exits-at-start", "v2");
    let failed = sb.deploy_env(&bad, name, port, "process", &["--secret", "API_KEY"], &env);
    failed.assert_code(3);
    assert_eq!(http_get(port, "/env/API_KEY").unwrap().1, SECRET);
    // The human-readable output too.
    let p = port.to_string();
    let args = [
        "deploy",
        v1.to_str().unwrap(),
        "--name",
        name,
        "--port",
        &p,
        "--secret",
        "API_KEY",
    ];
    let human = sb.run_with(&args, |c| {
        c.envs(env);
    });
    human.assert_code(0);

    // Without a value: a clear error that names the secret.
    let missing = sb.run(&args);
    missing.assert_code(10);
    assert!(
        missing.stderr.contains("secret API_KEY has no value"),
        "{}",
        missing.stderr
    );

    let job_id = ok.json()["deploy_job_id"].as_str().unwrap().to_string();
    let reads = [
        sb.run(&["--json", "status", &job_id]),
        sb.run(&["--json", "history", name]),
        sb.run(&["--json", "releases", name]),
        sb.run(&["--json", "audit"]),
        sb.run(&["audit"]),
    ];
    let mut all: Vec<&Run> = vec![&ok, &failed, &human, &missing];
    all.extend(reads.iter());
    assert_nowhere(&sb, &all);
    // The secret's name is recorded, so a rollback knows to supply it.
    assert!(reads[2].stdout.contains("API_KEY"));
}

#[test]
fn secrets_file_supplies_values() {
    let sb = Sandbox::new();
    let name = &sb.name("secf");
    let port = free_port();
    let secrets = sb.dir.path().join("secrets.env");
    std::fs::write(&secrets, format!("# comment\nAPI_KEY={SECRET}\n")).unwrap();
    let cfg = sb.dir.path().join("deployer.toml");
    std::fs::write(
        &cfg,
        format!("secrets_file = {:?}\n", secrets.to_str().unwrap()),
    )
    .unwrap();
    sb.track(name);
    let src = sb.service("hello", "v1");
    let r = sb.run(&[
        "--config",
        cfg.to_str().unwrap(),
        "deploy",
        src.to_str().unwrap(),
        "--name",
        name,
        "--port",
        &port.to_string(),
        "--secret",
        "API_KEY",
    ]);
    r.assert_code(0);
    assert_eq!(http_get(port, "/env/API_KEY").unwrap().1, SECRET);
    assert_nowhere(&sb, &[&r]);
}
