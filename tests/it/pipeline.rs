//! The seeds' guarded pipeline on this machine (process method): tests
//! before anything is transferred and in the new release, and a health
//! check that waits for a service warming up.

use crate::common::*;
use std::path::Path;

/// Adds a `[tests]` table to a service's manifest.
fn with_tests(src: &Path, local: Option<&str>, server: Option<&str>) {
    let mut toml = "[tests]\n".to_string();
    if let Some(l) = local {
        toml.push_str(&format!("local = {l:?}\n"));
    }
    if let Some(s) = server {
        toml.push_str(&format!("server = {s:?}\n"));
    }
    add_to_manifest(src, &toml);
}

fn releases(sb: &Sandbox, name: &str) -> usize {
    std::fs::read_dir(sb.state_dir().join("services").join(name).join("releases"))
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn failing_tests_stop_the_deploy_with_exit_1_and_current_keeps_answering() {
    let sb = Sandbox::new();
    let name = &sb.tracked("tested");
    let port = free_port();
    let v1 = sb.service("hello", "v1");
    with_tests(
        &v1,
        Some("echo 'test result: ok. 2 passed; 0 failed'"),
        Some("test -x hello"),
    );
    let job = sb
        .deploy(&v1, name, port, "process", &["--json"])
        .assert_code(0)
        .json();
    assert_eq!(version_on(port).as_deref(), Some("v1"));
    let transfer = phase(&job, "Transfer");
    assert!(
        transfer["details"]
            .as_str()
            .unwrap()
            .contains("2 passed, 0 failed (cargo test)"),
        "{transfer:#}"
    );
    assert_eq!(phase(&job, "Build")["steps"][3]["step"], "server tests");
    let current = sb.current(name);

    // A local test fails: nothing is transferred.
    let v2 = sb.service("hello", "v2");
    with_tests(
        &v2,
        Some("echo '=== 1 failed, 3 passed in 0.1s ==='; exit 1"),
        None,
    );
    let r = sb.deploy(&v2, name, port, "process", &[]);
    r.assert_code(1);
    assert!(r.stdout.contains("local tests failed"), "{}", r.stdout);
    assert!(r.stdout.contains("1 failed, 3 passed"), "{}", r.stdout);
    assert_eq!(releases(&sb, name), 1, "nothing was transferred");
    assert_eq!(version_on(port).as_deref(), Some("v1"));

    // A server test fails in the new release: it is discarded, current untouched.
    let v3 = sb.service("hello", "v3");
    with_tests(&v3, None, Some("grep -q v1 VERSION"));
    let r = sb.deploy(&v3, name, port, "process", &[]);
    r.assert_code(1);
    assert!(r.stdout.contains("server tests failed"), "{}", r.stdout);
    assert_eq!(releases(&sb, name), 1, "the tested release was removed");
    assert_eq!(sb.current(name), current);
    assert_eq!(version_on(port).as_deref(), Some("v1"));

    // --skip-tests deploys anyway, and the audit log says so.
    sb.deploy(&v3, name, port, "process", &["--skip-tests"])
        .assert_code(0);
    assert_eq!(version_on(port).as_deref(), Some("v3"));
    let audit = sb.run(&["audit", "--service", name]).stdout;
    assert!(audit.contains("skip-tests"), "{audit}");
}

#[test]
fn a_service_warming_up_with_503_for_3_s_is_waited_for() {
    let sb = Sandbox::new();
    let name = &sb.tracked("warming");
    let port = free_port();
    let job = sb
        .deploy(
            &sb.service("hello", "v1"),
            name,
            port,
            "process",
            &["--env", "WARMUP_SECS=3", "--json"],
        )
        .assert_code(0)
        .json();
    let health = phase(&job, "Verify Health");
    assert!(
        // The warm-up counts from the process's start, a few ms before
        // Verify Health starts.
        health["duration_ms"].as_i64().unwrap() >= 2800,
        "{health:#}"
    );
    assert_eq!(version_on(port).as_deref(), Some("v1"));
}

/// Adds a `[[smoke]]` check to a service's manifest.
fn with_smoke(src: &Path, check: &str) {
    add_to_manifest(src, &format!("[[smoke]]\n{check}\n"));
}

#[test]
fn a_smoke_check_the_new_release_fails_rolls_it_back_with_exit_4() {
    let sb = Sandbox::new();
    let name = &sb.tracked("smoked");
    let port = free_port();
    let v1 = sb.service("hello", "v1");
    with_smoke(
        &v1,
        "path = \"/version\"\nbody_contains = \"v1\"\nmax_ms = 2000",
    );
    with_smoke(
        &v1,
        "path = \"/health\"\njson_field = \"status\"\njson_equals = \"healthy\"",
    );
    let job = sb
        .deploy(&v1, name, port, "process", &["--json"])
        .assert_code(0)
        .json();
    let health = phase(&job, "Verify Health");
    assert!(
        health["details"]
            .as_str()
            .unwrap()
            .contains("2 smoke checks passed"),
        "{health:#}"
    );

    // v2 is healthy, but its /version does not say what the check expects.
    let v2 = sb.service("hello", "v2");
    with_smoke(&v2, "path = \"/version\"\nbody_contains = \"v1\"");
    let r = sb.deploy(&v2, name, port, "process", &[]);
    r.assert_code(4);
    assert!(
        r.stdout.contains("smoke check /version failed"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("rolled back to release"), "{}", r.stdout);
    assert_eq!(version_on(port).as_deref(), Some("v1"));
}

#[test]
fn a_migration_runs_before_the_old_release_stops_and_a_failed_one_leaves_it_running() {
    let sb = Sandbox::new();
    let name = &sb.tracked("migrated");
    let port = free_port();
    let schema = sb.dir.path().join("schema-version");
    let set = |src: &Path, migrate: &str| {
        let manifest = src.join("service.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        std::fs::write(manifest, format!("migrate = {migrate:?}\n{text}")).unwrap();
    };
    let v1 = sb.service("hello", "v1");
    set(&v1, "grep -q v1 VERSION && echo 1 > \"$SCHEMA\"");
    let mark = format!("SCHEMA={}", schema.display());
    sb.deploy(&v1, name, port, "process", &["--env", &mark])
        .assert_code(0);
    assert_eq!(std::fs::read_to_string(&schema).unwrap().trim(), "1");
    assert_eq!(version_on(port).as_deref(), Some("v1"));

    let v2 = sb.service("hello", "v2");
    set(&v2, "echo 'relation \"users\" already exists' >&2; exit 3");
    let r = sb.deploy(&v2, name, port, "process", &["--env", &mark]);
    r.assert_code(15);
    assert!(r.stdout.contains("already exists"), "{}", r.stdout);
    assert!(
        r.stdout.contains("release") && r.stdout.contains("kept running"),
        "{}",
        r.stdout
    );
    assert_eq!(version_on(port).as_deref(), Some("v1"));
    assert_eq!(std::fs::read_to_string(&schema).unwrap().trim(), "1");
}

#[test]
fn notifications_reach_a_receiver_in_three_formats_and_a_dead_one_fails_nothing() {
    let sb = Sandbox::new();
    let name = &sb.tracked("announced");
    let port = free_port();
    let receiver = FakeRegistry::start(200);
    let config = |at: u16| {
        let path = sb.dir.path().join(format!("notify-{at}.toml"));
        std::fs::write(
            &path,
            format!(
                "[[notify]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{at}/hook\"\n\n\
                 [[notify]]\nkind = \"slack\"\nurl = \"http://127.0.0.1:{at}/slack\"\n\n\
                 [[notify]]\nkind = \"telegram\"\nurl = \"http://127.0.0.1:{at}\"\nchat_id = \"42\"\ntoken_secret = \"TG_TOKEN\"\n"
            ),
        )
        .unwrap();
        path
    };
    let good = config(receiver.port);
    let run = |cfg: &Path, src: &Path| {
        sb.run_with(
            &[
                "--config",
                cfg.to_str().unwrap(),
                "--json",
                "deploy",
                src.to_str().unwrap(),
                "--name",
                name,
                "--port",
                &port.to_string(),
            ],
            |c| {
                c.env("TG_TOKEN", "123456:telegram-bot-token");
            },
        )
    };
    let job = run(&good, &sb.service("hello", "v1")).assert_code(0).json();
    let seen = receiver.bodies.lock().unwrap().clone();
    let body = |path: &str| {
        seen.iter()
            .find(|(p, _)| p == path)
            .map(|(_, b)| serde_json::from_str::<serde_json::Value>(b).unwrap())
            .unwrap_or_else(|| panic!("nothing at {path}: {seen:?}"))
    };
    assert_eq!(body("/hook")["event"], "success");
    assert_eq!(body("/hook")["deploy_job_id"], job["deploy_job_id"]);
    assert!(
        body("/slack")["text"]
            .as_str()
            .unwrap()
            .contains("deployed")
    );
    let tg = body("/bot123456:telegram-bot-token/sendMessage");
    assert_eq!(tg["chat_id"], "42");
    let notes = job["notifications"].as_array().unwrap();
    assert_eq!(notes.len(), 3);
    assert!(notes.iter().all(|n| n["delivered"] == true), "{notes:?}");

    // A failed deploy that was rolled back is announced as such.
    run(&good, &sb.service("broken/never-healthy", "v2")).assert_code(4);
    let seen = receiver.bodies.lock().unwrap().clone();
    let last_hook = seen.iter().rev().find(|(p, _)| p == "/hook").unwrap();
    assert!(
        last_hook.1.contains("\"event\":\"rollback\""),
        "{}",
        last_hook.1
    );

    // A receiver that is gone: the deploy succeeds and the job says so.
    let dead = config(free_port());
    let job = run(&dead, &sb.service("hello", "v3")).assert_code(0).json();
    let notes = job["notifications"].as_array().unwrap();
    assert!(
        notes
            .iter()
            .all(|n| n["delivered"] == false && n["attempts"] == 3),
        "{notes:?}"
    );
    assert!(
        !job.to_string().contains("telegram-bot-token"),
        "the bot token leaked: {job}"
    );
    assert_eq!(version_on(port).as_deref(), Some("v3"));
}

#[test]
fn a_jobs_report_shows_its_phases_steps_tests_and_outcome() {
    let sb = Sandbox::new();
    let name = &sb.tracked("reported");
    let port = free_port();
    let v1 = sb.service("hello", "v1");
    with_tests(&v1, Some("echo '===== 7 passed in 0.3s ====='"), None);
    let job = sb
        .deploy(&v1, name, port, "process", &["--json"])
        .assert_code(0)
        .json();
    let id = job["deploy_job_id"].as_str().unwrap();
    let md = sb.run(&["report", id, "--format", "markdown"]);
    md.assert_code(0);
    for want in [
        "| **Build** |",
        "| | local tests | success |",
        "7 passed in 0.3s (pytest)",
        "outcome: **succeeded",
    ] {
        assert!(md.stdout.contains(want), "{want} in:\n{}", md.stdout);
    }
    let text = sb.run(&["report", id]);
    assert!(text.stdout.contains("start new"), "{}", text.stdout);
    let json: serde_json::Value =
        serde_json::from_str(&sb.run(&["report", id, "--format", "json"]).stdout).unwrap();
    assert_eq!(json["deploy_job_id"], id);
    sb.run(&["report", "deploy-nope"]).assert_code(12);
}

#[test]
fn a_dry_run_prints_each_step_and_its_command_and_changes_nothing() {
    let sb = Sandbox::new();
    let name = &sb.name("dry");
    let port = free_port();
    let src = sb.service("hello", "v1");
    with_tests(&src, Some("cargo test -q"), None);
    let port_s = port.to_string();
    let r = sb.run(&[
        "deploy",
        src.to_str().unwrap(),
        "--name",
        name,
        "--port",
        &port_s,
        "--dry-run",
        "--env",
        "X=hunter2hunter2",
        "--build",
        "make X=hunter2hunter2",
    ]);
    r.assert_code(0);
    for want in [
        "nothing was changed",
        "Transfer / local tests: on this machine: sh -c \"cargo test -q\"",
        "Start Service / start new: in ",
        "sh -c \"exec ./hello\"",
        &format!("GET http://127.0.0.1:{port}/health until 2xx"),
    ] {
        assert!(r.stdout.contains(want), "{want} in:\n{}", r.stdout);
    }
    assert!(
        !r.stdout.contains("hunter2hunter2"),
        "an environment value shown:\n{}",
        r.stdout
    );
    assert!(!sb.state_dir().exists(), "a dry run wrote state");
    assert_eq!(version_on(port), None);
    let json = sb
        .run(&[
            "--json",
            "deploy",
            src.to_str().unwrap(),
            "--name",
            name,
            "--port",
            &port.to_string(),
            "--dry-run",
        ])
        .json();
    assert_eq!(
        json.as_array().unwrap().len(),
        19,
        "one entry per step: {json:#}"
    );
}
