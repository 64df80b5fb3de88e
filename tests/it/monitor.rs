//! `deployer monitor`: three real services, one killed; and `--watch` in a
//! real terminal (tmux), driven with send-keys and read with capture-pane.

use crate::common::*;
use std::process::Command;

/// Three services of the example, deployed with the process method; their
/// names and ports.
fn three(sb: &Sandbox) -> Vec<(String, u16)> {
    let src = sb.prebuilt("hello", "v1");
    (0..3)
        .map(|i| {
            let name = sb.name(&format!("mon{i}"));
            let port = free_port();
            sb.deploy(&src, &name, port, "process", &[]).assert_code(0);
            (name, port)
        })
        .collect()
}

fn kill(name: &str) {
    for pid in service_pids(name) {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    eventually(10, "the service to die", || {
        service_pids(name).is_empty().then_some(())
    });
}

#[test]
fn three_services_one_killed_gives_the_right_marks_and_exit_4() {
    let sb = Sandbox::new();
    let services = three(&sb);
    let ok = sb.run(&["monitor"]);
    ok.assert_code(0);
    for (name, port) in &services {
        let row = ok
            .stdout
            .lines()
            .find(|l| l.contains(name.as_str()))
            .unwrap();
        assert!(
            row.starts_with('✓') && row.contains(&port.to_string()),
            "{}",
            ok.stdout
        );
    }
    assert!(
        ok.stdout.contains("3 of 3 services healthy"),
        "{}",
        ok.stdout
    );
    assert!(
        ok.stdout.contains("local") && ok.stdout.contains("GiB"),
        "host stats: {}",
        ok.stdout
    );

    kill(&services[1].0);
    let bad = sb.run(&["monitor"]);
    bad.assert_code(4);
    for (i, (name, _)) in services.iter().enumerate() {
        let row = bad
            .stdout
            .lines()
            .find(|l| l.contains(name.as_str()))
            .unwrap();
        let mark = if i == 1 { '✗' } else { '✓' };
        assert!(row.starts_with(mark), "{name}: {}", bad.stdout);
    }
    assert!(
        bad.stdout.contains("2 of 3 services healthy"),
        "{}",
        bad.stdout
    );
    let json = sb.run(&["--json", "monitor"]);
    json.assert_code(4);
    let snap = json.json();
    assert_eq!(snap["healthy"], false);
    let down: Vec<&serde_json::Value> = snap["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["healthy"] == false)
        .collect();
    assert_eq!(down.len(), 1, "{snap:#}");
    assert_eq!(down[0]["service"], services[1].0.as_str());
    assert!(snap["hosts"][0]["memory_total_bytes"].as_u64().unwrap() > 0);
}

/// Kills its tmux session when the test ends, passed or not.
struct Session(String);

impl Drop for Session {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .output();
    }
}

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().expect("tmux");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn watch_refreshes_highlights_a_service_that_went_down_and_quits_on_q() {
    if Command::new("tmux").arg("-V").output().is_err() {
        panic!("tmux is missing (apt-get install tmux; scripts/test installs it)");
    }
    let sb = Sandbox::new();
    let services = three(&sb);
    let session = sb.name("watch");
    let bin = assert_cmd::cargo::cargo_bin("deployer");
    let command = format!(
        "NO_COLOR=1 {} --state-dir {} monitor --watch --interval 1",
        bin.display(),
        sb.state_dir().display()
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "150",
        "-y",
        "30",
        &command,
    ]);
    let _guard = Session(session.clone());
    let screen = || tmux(&["capture-pane", "-p", "-t", &session]);
    let first = eventually(20, "the first refresh", || {
        let s = screen();
        s.contains("refresh 2").then_some(s)
    });
    for (name, _) in &services {
        assert!(first.contains(&format!("✓  {name}")), "{first}");
    }
    kill(&services[2].0);
    let down = &services[2].0;
    let seen = eventually(20, "the changed row", || {
        let s = screen();
        s.contains(&format!("*✗ {down}")).then_some(s)
    });
    assert!(seen.contains("2 of 3 services healthy"), "{seen}");
    assert!(seen.contains(&format!("{down} on local now ✗")), "{seen}");
    tmux(&["send-keys", "-t", &session, "q"]);
    eventually(10, "the watch to quit on q", || {
        let alive = Command::new("tmux")
            .args(["has-session", "-t", &session])
            .output()
            .unwrap()
            .status
            .success();
        (!alive).then_some(())
    });
}
