//! `deployer serve` on a random port, driven over real HTTP.

use crate::common::server::{Server, request};
use crate::common::*;
use serde_json::{Value, json};

/// A sandbox with the example service (v1) and a server allowed to deploy
/// it, started with `env`. The server, bound last, is dropped first.
fn setup(env: &[(&str, &str)]) -> (Sandbox, std::path::PathBuf, Server) {
    let sb = Sandbox::new();
    let src = sb.service("hello", "v1");
    let server = Server::start(&sb, src.parent().unwrap(), env);
    (sb, src, server)
}

/// Reads a job's whole event stream: its events, and the raw text.
fn sse_events(server: &Server, id: &str) -> (Vec<Value>, String) {
    let (code, stream) = request(
        server.port,
        "GET",
        &format!("/deploy/{id}/events"),
        None,
        None,
    );
    assert_eq!(code, 200, "{stream}");
    let events = stream
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    (events, stream)
}

/// Polls a job until it is no longer pending or running.
fn finished(server: &Server, id: &str) -> Value {
    eventually(120, &format!("job {id} to finish"), || {
        let (code, job) = server.get(&format!("/deploy/{id}"));
        assert_eq!(code, 200, "{job}");
        (job["status"] == "completed" || job["status"] == "failed").then_some(job)
    })
}

#[test]
fn the_seed_request_deploys_registers_and_reports_six_phases() {
    let (sb, src, server) = setup(&[]);
    let name = &sb.tracked("i-proactive");
    let port = free_port();
    let body = json!({
        "service_path": src,
        "service_name": name,
        "droplet_id": 20,
        "service_port": port,
        "deployment_method": "process",
        "environment_vars": {"GREETING": "from the api"},
        "auto_register": true
    });
    let (code, accepted) = server.post("/deploy", Some(&body.to_string()));
    assert_eq!(code, 202, "{accepted}");
    assert_eq!(accepted["status"], "pending");
    assert_eq!(accepted["service_name"], name.as_str());
    assert!(accepted["created_at"].is_string());
    let id = accepted["deploy_job_id"].as_str().unwrap();
    assert!(id.starts_with("deploy-"));

    let job = finished(&server, id);
    assert_eq!(job["status"], "completed", "{job:#}");
    assert_eq!(job["success"], true);
    let names: Vec<&str> = job["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Validation",
            "Transfer",
            "Build",
            "Start Service",
            "Verify Health",
            "Register"
        ]
    );
    for p in job["phases"].as_array().unwrap() {
        assert_eq!(p["status"], "success", "{p:#}");
        assert!(p["duration_seconds"].is_number(), "{p:#}");
    }
    assert_eq!(job["registration"]["droplet_id"], 20);
    assert_eq!(job["service_url"], format!("http://127.0.0.1:{port}"));
    assert_eq!(http_get(port, "/env/GREETING").unwrap().1, "from the api");

    let (code, registry) = server.get("/registry");
    assert_eq!(code, 200);
    let listed = registry["services"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["service_name"], name.as_str());
    assert_eq!(listed[0]["endpoint"], format!("http://127.0.0.1:{port}"));
    let (code, health) = server.get(&format!("/registry/{name}/health"));
    assert_eq!((code, health["status"].as_str()), (200, Some("healthy")));

    let (code, history) = server.get(&format!("/deploy/history/{name}"));
    assert_eq!(code, 200);
    assert_eq!(history.as_array().unwrap().len(), 1);
    let (code, state) = server.get("/state");
    assert_eq!((code, state["completed"].as_i64()), (200, Some(1)));
    let (code, health) = server.get("/health");
    assert_eq!(code, 200, "{health}");
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["registry_status"], "builtin");
    let (code, caps) = server.get("/capabilities");
    assert_eq!((code, caps["deploys_to"].clone()), (200, json!(["local"])));
    let (code, deps) = server.get("/dependencies");
    assert_eq!(code, 200);
    let db = deps["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "database")
        .unwrap();
    assert_eq!(db["status"], "ok (1 jobs)", "a real count: {deps}");
    let (code, metrics) = request(server.port, "GET", "/metrics", None, None);
    assert_eq!(code, 200);
    assert!(
        metrics.contains("deployer_deploys_total{outcome=\"success\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("deployer_phase_duration_seconds_count{phase=\"Verify Health\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("deployer_active_jobs 0"), "{metrics}");
    let (code, doc) = server.get("/openapi.json");
    assert_eq!(code, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/deploy"]["post"].is_object());
    assert!(doc["components"]["schemas"]["Job"].is_object());

    // The events of a finished job: its phases, then the job.
    let (events, stream) = sse_events(&server, id);
    assert_eq!(events.len(), 7, "{stream}");
    assert_eq!(events[0]["phase"]["phase"], "Validation");
    assert_eq!(events[6]["event"], "done");
    assert_eq!(events[6]["job"]["deploy_job_id"], id);

    // Unknown things are 404s; a second version then a rollback.
    assert_eq!(server.get("/deploy/deploy-00000000").0, 404);
    assert_eq!(server.get("/deploy/history/nothing").0, 404);
    let (code, conflict) = server.post(&format!("/deploy/{id}/rollback"), None);
    assert_eq!(code, 409, "no previous version: {conflict}");
    let src2 = sb.service("hello", "v2");
    let body2 = json!({"service_path": src2, "service_name": name, "droplet_id": 20, "service_port": port, "deployment_method": "process"});
    let (_, a2) = server.post("/deploy", Some(&body2.to_string()));
    let j2 = finished(&server, a2["deploy_job_id"].as_str().unwrap());
    assert_eq!(j2["status"], "completed");
    assert_eq!(version_on(port).as_deref(), Some("v2"));
    let (code, rb) = server.post(
        &format!("/deploy/{}/rollback", j2["deploy_job_id"].as_str().unwrap()),
        None,
    );
    assert_eq!(code, 200, "{rb}");
    assert_eq!(rb["release"], job["release"]);
    assert_eq!(version_on(port).as_deref(), Some("v1"));
    assert_eq!(server.post("/deploy/deploy-00000000/rollback", None).0, 404);

    // Stop, then start the same release again.
    let (code, stopped) = server.post(&format!("/services/{name}/stop"), Some("{}"));
    assert_eq!(code, 200, "{stopped}");
    assert_eq!(version_on(port), None, "stopped: {stopped}");
    let (code, started) = server.post(&format!("/services/{name}/start"), Some("{}"));
    assert_eq!(code, 200, "{started}");
    assert_eq!(version_on(port).as_deref(), Some("v1"));
    let (code, restarted) = server.post(&format!("/services/{name}/restart"), Some("{}"));
    assert_eq!((code, restarted["action"].as_str()), (200, Some("restart")));
    assert_eq!(version_on(port).as_deref(), Some("v1"));
    assert_eq!(server.post("/services/nothing/start", Some("{}")).0, 404);
    let event = json!({"event": "rollback", "service_name": name, "trigger": "manual"});
    let (code, ok) = server.post("/events", Some(&event.to_string()));
    assert_eq!((code, ok["status"].as_str()), (200, Some("recorded")));
    let bad = json!({"event": "roll back; rm", "service_name": name});
    assert_eq!(server.post("/events", Some(&bad.to_string())).0, 400);
    assert_eq!(server.post("/services/..%2Fetc/stop", Some("{}")).0, 400);
}

#[test]
fn fifty_concurrent_deploys_across_five_services_all_complete_one_at_a_time_per_service() {
    let (sb, src, server) = setup(&[]);
    let services: Vec<(String, u16)> = (0..5)
        .map(|i| (sb.name(&format!("svc{i}")), free_port()))
        .collect();
    for (n, _) in &services {
        sb.track(n);
    }
    let ids: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let (name, port) = &services[i % 5];
                let body = json!({
                    "service_path": src, "service_name": name, "service_port": port,
                    "deployment_method": "process", "auto_register": false
                })
                .to_string();
                let port_api = server.port;
                let token = server.token.clone();
                scope.spawn(move || {
                    request(
                        port_api,
                        "POST",
                        "/deploy",
                        Some(body.as_bytes()),
                        Some(&token),
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let (code, body) = h.join().unwrap();
                assert_eq!(code, 202, "{body}");
                let v: Value = serde_json::from_str(&body).unwrap();
                v["deploy_job_id"].as_str().unwrap().to_string()
            })
            .collect()
    });
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 50, "fifty distinct jobs");
    let jobs: Vec<Value> = ids.iter().map(|id| finished(&server, id)).collect();
    for j in &jobs {
        assert_eq!(j["status"], "completed", "{j:#}");
    }
    // Per service: the jobs' working spans (Transfer start to Verify Health
    // end) never overlap.
    for (name, port) in &services {
        let mut spans: Vec<(Time, Time)> = jobs
            .iter()
            .filter(|j| j["service_name"] == name.as_str())
            .map(|j| {
                (
                    time(&phase(j, "Transfer")["started_at"]),
                    time(&phase(j, "Verify Health")["completed_at"]),
                )
            })
            .collect();
        assert_eq!(spans.len(), 10);
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "{name}: overlapping jobs {w:?}");
        }
        assert_eq!(version_on(*port).as_deref(), Some("v1"));
        assert_eq!(service_pids(name).len(), 1, "{name}");
    }
    let (_, state) = server.get("/state");
    assert_eq!(state["completed"], 50);
}

#[test]
fn a_server_killed_mid_deploy_leaves_an_interrupted_job_and_a_free_lock() {
    let (sb, src, mut server) = setup(&[]);
    let name = &sb.tracked("crash");
    let port = free_port();
    let slow = json!({"service_path": src, "service_name": name, "service_port": port,
        "deployment_method": "process", "build": "sleep 30", "auto_register": false});
    let (code, a) = server.post("/deploy", Some(&slow.to_string()));
    assert_eq!(code, 202);
    let id = a["deploy_job_id"].as_str().unwrap().to_string();
    eventually(30, "the build to run", || {
        let (_, job) = server.get(&format!("/deploy/{id}"));
        (phase(&job, "Build")["status"] == "running").then_some(())
    });
    server.kill(); // SIGKILL: no clean-up

    let server = Server::start(&sb, src.parent().unwrap(), &[]);
    let (_, job) = server.get(&format!("/deploy/{id}"));
    assert_eq!(job["status"], "failed", "{job:#}");
    assert_eq!(job["failure"], "interrupted");
    assert_eq!(
        phase(&job, "Transfer")["status"],
        "success",
        "what was done is kept"
    );
    assert_eq!(phase(&job, "Build")["status"], "failed");
    let next = json!({"service_path": src, "service_name": name, "service_port": port,
        "deployment_method": "process", "auto_register": false});
    let (_, a) = server.post("/deploy", Some(&next.to_string()));
    let done = finished(&server, a["deploy_job_id"].as_str().unwrap());
    assert_eq!(done["status"], "completed", "the lock was free: {done:#}");
    assert_eq!(version_on(port).as_deref(), Some("v1"));
}

#[test]
fn tokens_roots_body_limits_and_bad_fields() {
    let token = "t0ken-for-tests-7f3a-0123456789abcdef";
    let (sb, src, server) = setup(&[("DEPLOYER_API_TOKEN", token)]);
    for (method, path) in [
        ("POST", "/deploy"),
        ("POST", "/deploy/deploy-00000000/rollback"),
        ("POST", "/services/x/stop"),
        ("POST", "/services/x/start"),
        ("POST", "/services/x/restart"),
        ("POST", "/services/x/pause"),
        ("POST", "/services/x/resume"),
        ("POST", "/message"),
        ("POST", "/register"),
        ("POST", "/events"),
        ("DELETE", "/registry/x"),
    ] {
        let (code, body) = server.call(method, path, Some("{}"), None);
        assert_eq!(code, 401, "{method} {path}: {body}");
        let (code, _) = server.call(method, path, Some("{}"), Some("wrong-token"));
        assert_eq!(code, 401, "{method} {path} with a wrong token");
        let (code, _) = server.call(method, path, Some("{}"), Some(token));
        assert_ne!(code, 401, "{method} {path} with the token");
    }
    assert_eq!(server.get("/health").0, 200, "reads need no token");

    let name = sb.name("guarded");
    let outside = json!({"service_path": "/etc", "service_name": name, "service_port": 9999});
    let (code, err) = server.call("POST", "/deploy", Some(&outside.to_string()), Some(token));
    assert_eq!(
        (code, err["field"].as_str()),
        (400, Some("service_path")),
        "{err}"
    );
    let sneaky = json!({"service_path": format!("{}/../../..", src.display()), "service_name": name, "service_port": 9999});
    let (code, _) = server.call("POST", "/deploy", Some(&sneaky.to_string()), Some(token));
    assert_eq!(code, 400, "../ out of the root is refused");

    let bad_port = json!({"service_path": src, "service_name": name, "service_port": "eighty"});
    let (code, err) = server.call("POST", "/deploy", Some(&bad_port.to_string()), Some(token));
    assert_eq!(
        (code, err["field"].as_str()),
        (400, Some("service_port")),
        "{err}"
    );
    let (code, err) = server.call(
        "POST",
        "/deploy",
        Some(r#"{"service_name": "x"}"#),
        Some(token),
    );
    assert_eq!(
        (code, err["field"].as_str()),
        (400, Some("service_path")),
        "{err}"
    );
    let bad_name = json!({"service_path": src, "service_name": "../evil", "service_port": 9999});
    let (code, err) = server.call("POST", "/deploy", Some(&bad_name.to_string()), Some(token));
    assert_eq!(
        (code, err["field"].as_str()),
        (400, Some("service_name")),
        "{err}"
    );

    let huge = format!(
        "{{\"service_path\": \"{}\", \"pad\": \"{}\"}}",
        src.display(),
        "x".repeat(10 * 1024 * 1024)
    );
    let (code, _) = request(
        server.port,
        "POST",
        "/deploy",
        Some(huge.as_bytes()),
        Some(token),
    );
    assert_eq!(code, 413);
}

#[test]
fn the_seed_readme_curl_examples_work_as_written() {
    let (sb, src, server) = setup(&[]);
    let name = "auto-fix-engine";
    let port = free_port();
    // As in the seed's README, host and paths aside (and a port that is free
    // here), with the token every mutating request needs.
    let submit = format!(
        r#"curl -X POST http://localhost:{api}/deploy \
  -H "Content-Type: application/json" \
  -H "Authorization: Bearer {token}" \
  -d '{{
    "service_path": "{path}",
    "service_name": "{name}",
    "droplet_id": 23,
    "service_port": {port},
    "deployment_method": "process",
    "auto_register": true
  }}'"#,
        api = server.port,
        path = src.display(),
        token = server.token,
    );
    sb.track(name);
    let out = std::process::Command::new("sh")
        .args(["-c", &submit])
        .output()
        .unwrap();
    let accepted: Value = serde_json::from_slice(&out.stdout).expect("JSON from curl");
    let id = accepted["deploy_job_id"].as_str().unwrap();
    let check = format!("curl http://localhost:{}/deploy/{id}", server.port);
    let job = eventually(60, "the job", || {
        let out = std::process::Command::new("sh")
            .args(["-c", &check])
            .output()
            .unwrap();
        let job: Value = serde_json::from_slice(&out.stdout).ok()?;
        (job["status"] == "completed").then_some(job)
    });
    assert_eq!(job["registration"]["droplet_id"], 23);
    assert_eq!(version_on(port).as_deref(), Some("v1"));
}

#[test]
fn a_running_job_streams_its_phases_live() {
    let (sb, src, server) = setup(&[]);
    let name = &sb.tracked("live");
    let body = json!({"service_path": src, "service_name": name, "service_port": free_port(),
        "deployment_method": "process", "build": "sleep 1 && rustc -o hello main.rs", "auto_register": false});
    let (_, a) = server.post("/deploy", Some(&body.to_string()));
    let id = a["deploy_job_id"].as_str().unwrap();
    // Subscribed while it runs: the stream ends with the finished job.
    let (events, stream) = sse_events(&server, id);
    let done = events.last().unwrap();
    assert_eq!(done["event"], "done", "{stream}");
    assert_eq!(done["job"]["status"], "completed");
    let phases: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "phase")
        .map(|e| e["phase"]["phase"].as_str().unwrap())
        .collect();
    for p in ["Build", "Start Service", "Verify Health"] {
        assert!(phases.contains(&p), "{p} in {phases:?}");
    }
}

#[test]
fn deploy_with_server_renders_the_same_output_as_a_local_deploy() {
    let token = "remote-cli-token-1-0123456789abcdef";
    let (sb, src, server) = setup(&[("DEPLOYER_API_TOKEN", token)]);
    let name = &sb.tracked("remote");
    let port = free_port();
    let url = server.url("");
    let args = [
        "deploy",
        src.to_str().unwrap(),
        "--server",
        &url,
        "--name",
        name,
        "--port",
        &port.to_string(),
        "--droplet-id",
        "5",
    ];
    // Without the token: refused, clearly.
    let refused = sb.run(&args);
    refused.assert_code(10);
    assert!(refused.stderr.contains("401"), "{}", refused.stderr);

    let r = sb.run_with(&args, |c| {
        c.env("DEPLOYER_API_TOKEN", token);
    });
    r.assert_code(0);
    // The built-in registry takes the server's own token.
    for p in [
        "✓ Validation",
        "✓ Transfer",
        "✓ Build",
        "✓ Start Service",
        "✓ Verify Health",
        "✓ Register",
    ] {
        assert!(r.stdout.contains(p), "{p} in:\n{}", r.stdout);
    }
    assert!(
        r.stdout.contains(&format!("✓ {name} deploy succeeded")),
        "{}",
        r.stdout
    );
    assert_eq!(version_on(port).as_deref(), Some("v1"));

    // A failing deploy gives the same exit code as locally.
    let bad = sb.service("broken/never-healthy", "v2");
    let args = [
        "deploy",
        bad.to_str().unwrap(),
        "--server",
        &url,
        "--name",
        name,
        "--port",
        &port.to_string(),
        "--no-register",
    ];
    let r = sb.run_with(&args, |c| {
        c.env("DEPLOYER_API_TOKEN", token);
    });
    r.assert_code(4);
    assert!(r.stdout.contains("✗ Verify Health"), "{}", r.stdout);
    assert!(r.stdout.contains("rolled back to release"), "{}", r.stdout);
    assert_eq!(version_on(port).as_deref(), Some("v1"));
}

#[test]
fn a_server_killed_during_verify_health_brings_the_previous_release_back_when_it_restarts() {
    let (sb, src, mut server) = setup(&[]);
    let name = &sb.tracked("revive");
    let port = free_port();
    let v1 = json!({"service_path": src, "service_name": name, "service_port": port,
        "deployment_method": "process", "auto_register": false});
    let (_, a) = server.post("/deploy", Some(&v1.to_string()));
    let first = finished(&server, a["deploy_job_id"].as_str().unwrap());
    assert_eq!(first["status"], "completed", "{first:#}");
    assert_eq!(version_on(port).as_deref(), Some("v1"));

    // v2 starts but never answers: the server dies while it waits for health.
    let v2 = json!({"service_path": sb.service("hello", "v2"), "service_name": name,
        "service_port": port, "deployment_method": "process", "auto_register": false,
        "start": "sleep 300"});
    let (_, a) = server.post("/deploy", Some(&v2.to_string()));
    let id = a["deploy_job_id"].as_str().unwrap().to_string();
    eventually(60, "Verify Health to run", || {
        let (_, job) = server.get(&format!("/deploy/{id}"));
        (phase(&job, "Verify Health")["status"] == "running").then_some(())
    });
    assert_eq!(version_on(port), None, "v1 was stopped for v2");
    server.kill(); // SIGKILL: no clean-up

    let server = Server::start(&sb, src.parent().unwrap(), &[]);
    eventually(60, "v1 to answer again", || {
        (version_on(port).as_deref() == Some("v1")).then_some(())
    });
    let (_, job) = server.get(&format!("/deploy/{id}"));
    assert_eq!(job["failure"], "interrupted", "{job:#}");
    eventually(30, "v2's process to be gone", || {
        (service_pids(name).len() == 1).then_some(())
    });
    let audit = eventually(30, "the recovery in the audit log", || {
        let audit = sb.run(&["audit", "--service", name]).stdout;
        audit
            .contains("recovered: restarted release")
            .then_some(audit)
    });
    assert!(audit.contains("recovered: took down release"), "{audit}");
}
