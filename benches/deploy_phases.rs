//! Wall time of a whole process-method deploy of the example service, and of
//! each phase, over repeated redeploys on this machine.
//! Run: `cargo bench --bench deploy_phases`. Figures go in docs/benchmarks.md.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

const RUNS: usize = 10;

fn main() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = repo.join("target/release/deployer");
    let status = Command::new("cargo")
        .args(["build", "--release", "--quiet", "--bin", "deployer"])
        .current_dir(repo)
        .status()
        .expect("cargo build");
    assert!(status.success());
    let state = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut totals = Vec::new();
    let mut phases: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for _ in 0..RUNS {
        let start = Instant::now();
        let out = Command::new(&bin)
            .args(["--json", "--state-dir"])
            .arg(state.path())
            .args(["deploy"])
            .arg(repo.join("examples/hello"))
            .args([
                "--name",
                "bench-hello",
                "--port",
                &port.to_string(),
                "--method",
                "process",
            ])
            .output()
            .expect("deployer");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        totals.push(start.elapsed().as_secs_f64() * 1000.0);
        let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for p in job["phases"].as_array().unwrap() {
            if let Some(ms) = p["duration_ms"].as_i64() {
                phases
                    .entry(p["phase"].as_str().unwrap().to_string())
                    .or_default()
                    .push(ms as f64);
            }
        }
    }
    // Stop the benchmark's service.
    let run_dir = state.path().join("services/bench-hello/run");
    for e in std::fs::read_dir(run_dir).unwrap().flatten() {
        if let Some(pid) = std::fs::read_to_string(e.path())
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<i32>().ok())
        {
            unsafe { libc::kill(-pid, libc::SIGTERM) };
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    println!("process deploy of examples/hello, {RUNS} redeploys (median):");
    println!("  {:<16} {:>8.1} ms", "whole command", median(&mut totals));
    for (name, mut v) in phases {
        println!("  {:<16} {:>8.1} ms", name, median(&mut v));
    }
}
