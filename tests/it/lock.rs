//! Two deploys of one service started together never interleave.

use crate::common::*;
use std::process::Stdio;

fn start_two(sb: &Sandbox, name: &str, port: u16, extra: &[&str]) -> Vec<Run> {
    let a = sb.service("hello", "va");
    let b = sb.service("hello", "vb");
    sb.track(name);
    let children: Vec<_> = [a, b]
        .iter()
        .map(|src| {
            let mut c = sb.cmd();
            c.args([
                "deploy",
                src.to_str().unwrap(),
                "--name",
                name,
                "--port",
                &port.to_string(),
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            Run {
                code: o.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            }
        })
        .collect()
}

#[test]
fn concurrent_deploys_one_is_refused_naming_the_holder() {
    let sb = Sandbox::new();
    let name = &sb.name("race");
    let port = free_port();
    let runs = start_two(&sb, name, port, &[]);
    let codes: Vec<i32> = runs.iter().map(|r| r.code).collect();
    assert!(codes.contains(&0), "one deploy succeeds: {codes:?}");
    assert!(
        codes.iter().all(|c| *c == 0 || *c == 11),
        "{codes:?}: {}",
        runs.iter()
            .map(|r| r.stderr.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    for r in runs.iter().filter(|r| r.code == 11) {
        assert!(
            r.stderr
                .contains("is locked by another deploy: job deploy-"),
            "{}",
            r.stderr
        );
        assert!(
            r.stderr.contains("pid "),
            "the holder is named: {}",
            r.stderr
        );
    }
    assert_eq!(service_pids(name).len(), 1, "never two running instances");
    let current = sb.current(name).expect("a valid current");
    let v = version_on(port).unwrap();
    assert!(v == "va" || v == "vb");
    assert!(
        std::fs::read_to_string(
            sb.state_dir()
                .join("services")
                .join(name)
                .join("releases")
                .join(current)
                .join("VERSION")
        )
        .unwrap()
        .trim()
            == v
    );
}

#[test]
fn concurrent_deploys_with_wait_run_one_after_the_other() {
    let sb = Sandbox::new();
    let name = &sb.name("queue");
    let port = free_port();
    let runs = start_two(&sb, name, port, &["--wait", "60"]);
    for r in &runs {
        r.assert_code(0);
    }
    assert_eq!(service_pids(name).len(), 1);
    let history = sb.run(&["--json", "history", name]).assert_code(0).json();
    let jobs = history.as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    // Never interleaved: one job ended before the other started.
    let (newer, older) = (&jobs[0], &jobs[1]);
    let transfer_started = time(&phase(newer, "Transfer")["started_at"]);
    assert!(
        transfer_started >= time(&older["completed_at"]),
        "{history:#}"
    );
    assert_eq!(newer["previous_release"], older["release"]);
    sb.current(name).expect("a valid current");
}

#[test]
fn deployer_killed_mid_deploy_leaves_no_lock_and_the_next_deploy_works() {
    let sb = Sandbox::new();
    let name = &sb.name("killed");
    let port = free_port();
    sb.deploy(&sb.service("hello", "v1"), name, port, "process", &[])
        .assert_code(0);
    sb.track(name);
    let slow = sb.service("hello", "v2");
    let mut child = sb
        .cmd()
        .args([
            "deploy",
            slow.to_str().unwrap(),
            "--name",
            name,
            "--port",
            &port.to_string(),
        ])
        .args(["--build", "sleep 30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until it holds the lock and is building.
    let lock = sb
        .state_dir()
        .join("services")
        .join(name)
        .join("deploy.lock");
    eventually(20, "the deploy to take the lock", || {
        let text = std::fs::read_to_string(&lock).ok()?;
        let building =
            sb.run(&["--json", "history", name]).json()[0]["phases"][2]["status"] == "running";
        (text.contains("job_id") && building).then_some(())
    });
    child.kill().unwrap(); // SIGKILL: no clean-up runs
    child.wait().unwrap();
    assert_eq!(
        version_on(port).as_deref(),
        Some("v1"),
        "the old release still answers"
    );

    let next = sb.deploy(&sb.service("hello", "v3"), name, port, "process", &[]);
    next.assert_code(0);
    assert_eq!(version_on(port).as_deref(), Some("v3"));
    let history = sb.run(&["--json", "history", name]).assert_code(0).json();
    let killed = &history[1];
    assert_eq!(killed["status"], "failed");
    assert_eq!(killed["failure"], "interrupted");
    assert_eq!(
        killed["phases"][2]["status"], "failed",
        "Build was running when it died"
    );
    let audit = sb
        .run(&["--json", "audit", "--service", name])
        .assert_code(0)
        .json();
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "lock" && a["outcome"] == "taken over"),
        "{audit:#}"
    );
}
