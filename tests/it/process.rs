//! The process method end to end: real processes on this machine.

use crate::common::*;

#[test]
fn deploys_v1_then_v2_and_keeps_history_and_audit() {
    let sb = Sandbox::new();
    let web = &sb.name("web");
    let port = free_port();
    let v1 = sb.service("hello", "v1");
    let job1 = sb
        .deploy(&v1, web, port, "process", &[])
        .assert_code(0)
        .json();
    assert_eq!(version_on(port).as_deref(), Some("v1"));
    assert_eq!(job1["status"], "completed");
    for p in job1["phases"].as_array().unwrap() {
        let expected = if p["phase"] == "Register" {
            "skipped"
        } else {
            "success"
        };
        assert_eq!(p["status"], expected, "{p:#}");
    }
    assert!(phase(&job1, "Verify Health")["duration_ms"].is_i64());

    let v2 = sb.service("hello", "v2");
    let job2 = sb
        .deploy(&v2, web, port, "process", &[])
        .assert_code(0)
        .json();
    assert_eq!(version_on(port).as_deref(), Some("v2"));
    assert_eq!(job2["previous_release"], job1["release"]);
    assert_eq!(sb.current(web), job2["release"].as_str().map(String::from));
    assert_eq!(service_pids(web).len(), 1, "one running instance");

    let history = sb.run(&["--json", "history", web]).assert_code(0).json();
    let ids: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["deploy_job_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            job2["deploy_job_id"].as_str().unwrap(),
            job1["deploy_job_id"].as_str().unwrap()
        ]
    );
    let text = sb.run(&["history", web]).assert_code(0).stdout.clone();
    assert!(
        text.contains("completed") && text.contains(job1["release"].as_str().unwrap()),
        "{text}"
    );

    let audit = sb
        .run(&["--json", "audit", "--service", web])
        .assert_code(0)
        .json();
    let lines = audit.as_array().unwrap();
    assert_eq!(lines.len(), 2, "{audit:#}");
    assert!(
        lines
            .iter()
            .all(|l| l["action"] == "deploy" && l["outcome"] == "success")
    );
    assert!(lines.iter().all(|l| l["duration_ms"].as_i64().unwrap() > 0));

    let status = sb
        .run(&["status", job2["deploy_job_id"].as_str().unwrap()])
        .assert_code(0)
        .stdout
        .clone();
    assert!(status.contains("✓ Verify Health"), "{status}");
}

#[test]
fn never_healthy_release_is_rolled_back_with_exit_4() {
    let sb = Sandbox::new();
    let web = &sb.name("web");
    let port = free_port();
    let good = sb
        .deploy(&sb.service("hello", "v2"), web, port, "process", &[])
        .assert_code(0)
        .json();
    let bad = sb.deploy(
        &sb.service("broken/never-healthy", "v3"),
        web,
        port,
        "process",
        &[],
    );
    bad.assert_code(4);
    let job = bad.json();
    assert_eq!(
        version_on(port).as_deref(),
        Some("v2"),
        "the old version still answers"
    );
    assert_eq!(phase(&job, "Verify Health")["status"], "failed");
    assert!(
        phase(&job, "Verify Health")["error"]
            .as_str()
            .unwrap()
            .contains("503"),
        "{job:#}"
    );
    assert_eq!(phase(&job, "Register")["status"], "skipped");
    assert_eq!(job["failure"], "health");
    assert_eq!(job["rollback"]["success"], true);
    assert_eq!(job["rollback"]["to_release"], good["release"]);
    assert_eq!(sb.current(web), good["release"].as_str().map(String::from));
    assert_eq!(service_pids(web).len(), 1);
    // The failed release's files are gone; it is listed as failed.
    let releases = sb.run(&["--json", "releases", web]).assert_code(0).json();
    let failed = releases
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == job["release"])
        .unwrap();
    assert_eq!(failed["status"], "failed");
    assert!(
        !sb.state_dir()
            .join("services")
            .join(web)
            .join("releases")
            .join(job["release"].as_str().unwrap())
            .exists()
    );
    // The stored job says the same as the printed one.
    let stored = sb
        .run(&["--json", "status", job["deploy_job_id"].as_str().unwrap()])
        .assert_code(0)
        .json();
    assert_eq!(stored["rollback"], job["rollback"]);
    assert_eq!(phase(&stored, "Verify Health")["status"], "failed");
}

#[test]
fn exits_at_start_fails_with_exit_3_and_shows_the_log() {
    let sb = Sandbox::new();
    let web = &sb.name("web");
    let port = free_port();
    sb.deploy(&sb.service("hello", "v2"), web, port, "process", &[])
        .assert_code(0);
    let bad = sb.deploy(
        &sb.service("broken/exits-at-start", "v3"),
        web,
        port,
        "process",
        &[],
    );
    bad.assert_code(3);
    let job = bad.json();
    let err = phase(&job, "Verify Health")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(err.contains("exited with code 3"), "{err}");
    assert!(
        err.contains("DATABASE_URL is not set"),
        "the service's own last words: {err}"
    );
    assert_eq!(job["rollback"]["success"], true);
    assert_eq!(version_on(port).as_deref(), Some("v2"));
}

#[test]
fn a_job_past_its_time_limit_fails_and_the_previous_release_answers() {
    let sb = Sandbox::new();
    let web = &sb.name("slow");
    let port = free_port();
    sb.deploy(&sb.prebuilt("hello", "v1"), web, port, "process", &[])
        .assert_code(0);
    // Its health check would wait two minutes; the job may take three seconds.
    let v2 = sb.prebuilt("broken/never-healthy", "v2");
    let manifest = std::fs::read_to_string(v2.join("service.toml"))
        .unwrap()
        .replace("timeout_secs = 3", "timeout_secs = 120");
    std::fs::write(v2.join("service.toml"), manifest).unwrap();
    add_to_manifest(&v2, "[limits]\njob_timeout_secs = 3\n");
    let started = std::time::Instant::now();
    let bad = sb.deploy(&v2, web, port, "process", &[]);
    bad.assert_code(4);
    assert!(started.elapsed().as_secs() < 60, "{:?}", started.elapsed());
    let job = bad.json();
    let error = phase(&job, "Verify Health")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains("ran out of time") && error.contains("job_timeout_secs = 3"),
        "{error}"
    );
    assert_eq!(job["rollback"]["success"], true, "{job:#}");
    assert_eq!(version_on(port).as_deref(), Some("v1"));
}

#[test]
fn build_failure_exits_2_and_never_stops_the_running_release() {
    let sb = Sandbox::new();
    let web = &sb.name("web");
    let port = free_port();
    sb.deploy(&sb.service("hello", "v2"), web, port, "process", &[])
        .assert_code(0);
    let pids = service_pids(web);
    let bad = sb.deploy(
        &sb.service("broken/fails-to-build", "v3"),
        web,
        port,
        "process",
        &[],
    );
    bad.assert_code(2);
    let job = bad.json();
    assert!(
        phase(&job, "Build")["error"]
            .as_str()
            .unwrap()
            .contains("mismatched types"),
        "{job:#}"
    );
    assert_eq!(phase(&job, "Start Service")["status"], "skipped");
    assert_eq!(
        service_pids(web),
        pids,
        "the running process was never touched"
    );
    assert_eq!(version_on(port).as_deref(), Some("v2"));
}

#[test]
fn rollback_command_brings_back_v1() {
    let sb = Sandbox::new();
    let web = &sb.name("web");
    let port = free_port();
    let j1 = sb
        .deploy(&sb.service("hello", "v1"), web, port, "process", &[])
        .assert_code(0)
        .json();
    sb.deploy(&sb.service("hello", "v2"), web, port, "process", &[])
        .assert_code(0);
    assert_eq!(version_on(port).as_deref(), Some("v2"));
    let rb = sb.run(&["--json", "rollback", web]).assert_code(0).json();
    assert_eq!(rb["kind"], "rollback");
    assert_eq!(rb["release"], j1["release"]);
    assert_eq!(phase(&rb, "Transfer")["status"], "skipped");
    assert_eq!(version_on(port).as_deref(), Some("v1"));
    assert_eq!(sb.current(web), j1["release"].as_str().map(String::from));
    assert_eq!(service_pids(web).len(), 1);
    // And forward again to the v2 release by id.
    let releases = sb.run(&["--json", "releases", web]).assert_code(0).json();
    let v2 = releases
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["status"] == "previous")
        .unwrap();
    sb.run(&["rollback", web, "--to", v2["id"].as_str().unwrap()])
        .assert_code(0);
    assert_eq!(version_on(port).as_deref(), Some("v2"));
    // Unknown release: a clear error.
    let r = sb.run(&["rollback", web, "--to", "nope"]);
    r.assert_code(12);
    assert!(r.stderr.contains("has no release 'nope'"), "{}", r.stderr);
}

#[test]
fn redeploying_the_same_content_is_safe_and_leaves_one_instance() {
    let sb = Sandbox::new();
    let web = &sb.name("web");
    let port = free_port();
    let src = sb.service("hello", "v1");
    sb.deploy(&src, web, port, "process", &[]).assert_code(0);
    sb.deploy(&src, web, port, "process", &[]).assert_code(0);
    sb.deploy(&src, web, port, "process", &[]).assert_code(0);
    assert_eq!(service_pids(web).len(), 1);
    assert_eq!(version_on(port).as_deref(), Some("v1"));
}

#[test]
fn deployed_process_outlives_deployer() {
    let sb = Sandbox::new();
    let web = &sb.name("web");
    let port = free_port();
    sb.deploy(&sb.service("hello", "v1"), web, port, "process", &[])
        .assert_code(0);
    // deployer has exited; the service is in its own session and still runs.
    let pid = service_pids(web)[0];
    let sid = unsafe { libc::getsid(pid) };
    assert_eq!(sid, pid, "the service leads its own session");
    assert_eq!(version_on(port).as_deref(), Some("v1"));
}

#[test]
fn releases_older_than_keep_days_are_pruned_but_never_current_or_previous() {
    let sb = Sandbox::new();
    let web = &sb.name("aged");
    let port = free_port();
    let mut ids = Vec::new();
    for v in ["v1", "v2", "v3"] {
        let src = sb.prebuilt("hello", v);
        // keep_releases is 5, but any release older than now is too old.
        // A top-level key: before the manifest's tables.
        let manifest = std::fs::read_to_string(src.join("service.toml")).unwrap();
        std::fs::write(
            src.join("service.toml"),
            format!("keep_days = 0\n{manifest}"),
        )
        .unwrap();
        let j = sb
            .deploy(&src, web, port, "process", &[])
            .assert_code(0)
            .json();
        ids.push(j["release"].as_str().unwrap().to_string());
    }
    let on_disk = releases_on_disk(&sb, web);
    assert_eq!(
        on_disk,
        ids[1..].to_vec(),
        "v2 (previous) and v3 (current) stay"
    );
    let releases = sb.run(&["--json", "releases", web]).json();
    let v1 = releases
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == ids[0].as_str())
        .unwrap();
    assert_eq!(v1["status"], "removed", "{releases:#}");
}

#[test]
fn keeps_only_n_releases_but_never_current_or_previous() {
    let sb = Sandbox::new();
    let web = &sb.name("web");
    let port = free_port();
    let mut last = Vec::new();
    for v in ["v1", "v2", "v3", "v4"] {
        let mut src = sb.service("hello", v);
        let toml = std::fs::read_to_string(src.join("service.toml")).unwrap();
        std::fs::write(
            src.join("service.toml"),
            toml.replace("keep_releases = 5", "keep_releases = 2"),
        )
        .unwrap();
        let j = sb
            .deploy(&src, web, port, "process", &[])
            .assert_code(0)
            .json();
        last.push(j["release"].as_str().unwrap().to_string());
        src.clear();
    }
    let on_disk = releases_on_disk(&sb, web);
    assert_eq!(
        on_disk,
        last[2..].to_vec(),
        "v3 (previous) and v4 (current) stay"
    );
}

#[test]
fn stop_stops_the_running_release() {
    let sb = Sandbox::new();
    let web = &sb.name("web");
    let port = free_port();
    sb.deploy(&sb.service("hello", "v1"), web, port, "process", &[])
        .assert_code(0);
    let out = sb.run(&["stop", web]).assert_code(0).stdout.clone();
    assert!(out.contains("stopped release"), "{out}");
    assert!(service_pids(web).is_empty());
    assert_eq!(version_on(port), None, "nothing answers on the port");
    let out = sb.run(&["stop", web]).assert_code(0).stdout.clone();
    assert!(out.contains("nothing was running"), "{out}");
    // A redeploy starts it again.
    sb.deploy(&sb.service("hello", "v2"), web, port, "process", &[])
        .assert_code(0);
    assert_eq!(version_on(port).as_deref(), Some("v2"));
}

#[test]
fn stop_then_start_brings_the_same_release_back_and_restart_replaces_its_process() {
    let sb = Sandbox::new();
    let web = &sb.tracked("startable");
    let port = free_port();
    sb.deploy(
        &sb.service("hello", "v1"),
        web,
        port,
        "process",
        &["--env", "MODE=green"],
    )
    .assert_code(0);
    let current = sb.current(web);
    sb.run(&["stop", web]).assert_code(0);
    assert_eq!(version_on(port), None);
    let out = sb.run(&["start", web]).assert_code(0).stdout.clone();
    assert!(out.contains("started (healthy after"), "{out}");
    assert_eq!(version_on(port).as_deref(), Some("v1"));
    assert_eq!(
        http_get(port, "/env/MODE").map(|r| r.1).as_deref(),
        Some("green"),
        "its environment came back too"
    );
    assert_eq!(sb.current(web), current);
    let out = sb.run(&["start", web]).assert_code(0).stdout.clone();
    assert!(out.contains("already running"), "{out}");
    let before = service_pids(web);
    sb.run(&["restart", web]).assert_code(0);
    let after = service_pids(web);
    assert_eq!(after.len(), 1);
    assert_ne!(before, after, "a new process");
    assert_eq!(version_on(port).as_deref(), Some("v1"));
    let audit = sb.run(&["audit", "--service", web]).stdout;
    assert!(
        audit.contains("start") && audit.contains("restart"),
        "{audit}"
    );
    sb.run(&["start", "never-deployed"]).assert_code(12);
}

#[test]
fn check_says_healthy_or_not_with_an_exit_code_for_cron_and_a_log() {
    let sb = Sandbox::new();
    let web = &sb.tracked("checked");
    let port = free_port();
    sb.deploy(&sb.service("hello", "v1"), web, port, "process", &[])
        .assert_code(0);
    let log = sb.dir.path().join("check.log");
    let log_s = log.to_str().unwrap();
    let ok = sb.run(&["check", web, "--log", log_s]);
    ok.assert_code(0);
    assert!(
        ok.stdout.contains(&format!("✓ {web} on local: healthy in")),
        "{}",
        ok.stdout
    );
    sb.run(&["stop", web]).assert_code(0);
    let down = sb.run(&["check", web, "--log", log_s]);
    down.assert_code(4);
    assert!(
        down.stdout.contains(&format!("✗ {web} on local")),
        "{}",
        down.stdout
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(logged.lines().count(), 2, "{logged}");
    assert!(logged.lines().nth(1).unwrap().contains('✗'), "{logged}");
    sb.run(&["check", "never-deployed"]).assert_code(12);
}

#[test]
fn process_logs_are_rotated_by_size() {
    let sb = Sandbox::new();
    let web = &sb.tracked("rotated");
    let port = free_port();
    // Each start writes one ~65-byte line (with its time); the log may hold 100 bytes.
    let small = [("DEPLOYER_LOG_MAX_BYTES", "100")];
    sb.deploy_env(
        &sb.service("hello", "v1"),
        web,
        port,
        "process",
        &[],
        &small,
    )
    .assert_code(0);
    for _ in 0..3 {
        sb.run_with(&["restart", web], |c| {
            c.envs(small);
        })
        .assert_code(0);
    }
    let dir = sb.state_dir().join("services").join(web).join("logs");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files.len(), 4, "the log and three rotated: {files:?}");
    assert!(
        files[1].ends_with(".log.1") && files[3].ends_with(".log.3"),
        "{files:?}"
    );
    for f in &files {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(
            text.len() <= 100 && text.contains("listening on port"),
            "{f}: {text}"
        );
    }
    let logs = sb.run(&["logs", web]);
    assert!(
        logs.stdout.contains("hello v1 listening"),
        "{}",
        logs.stdout
    );
    assert_eq!(version_on(port).as_deref(), Some("v1"));
}

#[test]
fn logs_show_the_current_releases_output_and_follow_new_lines() {
    let sb = Sandbox::new();
    let web = &sb.tracked("logged");
    let port = free_port();
    sb.deploy(&sb.service("hello", "v1"), web, port, "process", &[])
        .assert_code(0);
    let logs = sb.run(&["logs", web, "-n", "5"]);
    logs.assert_code(0);
    assert!(
        logs.stdout.contains("hello v1 listening on port"),
        "{}",
        logs.stdout
    );

    logs_show_and_follow(&sb, web, &[]);
}
