//! The Sacred Loop (`deployer pipeline run`, `POST /pipeline`): a verifier
//! and an auto-fixer as real HTTP servers on loopback, then the deploy and
//! the registration.

use crate::common::server::Server;
use crate::common::*;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A verifier like the seed's: `POST /verify` answers 202 with a job id;
/// `GET /verify/ver-1` says running once, then `verdict`.
fn verifier(verdict: Value) -> FakeRegistry {
    let polls = Arc::new(AtomicUsize::new(0));
    FakeRegistry::answering(Box::new(move |method, path, _| match (method, path) {
        ("POST", "/verify") => (
            202,
            json!({"job_id": "ver-1", "status": "running"}).to_string(),
        ),
        ("GET", "/verify/ver-1") if polls.fetch_add(1, Ordering::SeqCst) == 0 => (
            200,
            json!({"job_id": "ver-1", "status": "running"}).to_string(),
        ),
        ("GET", "/verify/ver-1") => (200, verdict.to_string()),
        _ => (404, json!({"error": "no such thing"}).to_string()),
    }))
}

/// An auto-fixer that answers at once.
fn fixer() -> FakeRegistry {
    FakeRegistry::answering(Box::new(|_, _, _| {
        (
            200,
            json!({"status": "fixed", "fix_id": "fix-1"}).to_string(),
        )
    }))
}

/// deployer.toml with the registry and three stages: verify, fix (naming
/// verify's job id) and a local command.
fn config(
    sb: &Sandbox,
    verify: &FakeRegistry,
    fix: &FakeRegistry,
    registry: &FakeRegistry,
) -> String {
    let path = sb.dir.path().join("deployer.toml");
    std::fs::write(
        &path,
        format!(
            r#"registry_url = "{}"

[[pipeline]]
name = "verify"
url = "{}/verify"
timeout_secs = 30

[[pipeline]]
name = "fix"
url = "{}/fix"
body = {{ verification_job_id = "{{verify.job_id}}", note = "{{intent}}" }}

[[pipeline]]
name = "lint"
command = "test -f service.toml && echo lint ok for $SERVICE_NAME"
"#,
            registry.url(),
            verify.url(),
            fix.url()
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn a_failing_verify_stops_before_transfer_and_a_passing_one_deploys_and_registers() {
    let sb = Sandbox::new();
    let name = sb.name("loop");
    sb.track(&name);
    let port = free_port();
    let src = sb.service("hello", "v1");
    let registry = FakeRegistry::start(200);
    let fix = fixer();

    // The verifier finds a problem: nothing goes further.
    let bad = verifier(json!({"status": "failed", "issues": "main.rs:3: unused variable `x`"}));
    let cfg = config(&sb, &bad, &fix, &registry);
    // A job a stage stopped ends like any other: it is announced.
    let hook = FakeRegistry::start(200);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "\n[[notify]]\nkind = \"webhook\"\nurl = \"{}/hook\"\n",
        hook.url()
    ));
    std::fs::write(&cfg, text).unwrap();
    let port_s = port.to_string();
    let run = sb.run(&[
        "--config",
        &cfg,
        "--json",
        "pipeline",
        "run",
        src.to_str().unwrap(),
        "--name",
        &name,
        "--port",
        &port_s,
        "--method",
        "process",
        "--droplet-id",
        "25",
        "--intent",
        "say hello",
    ]);
    run.assert_code(17);
    let job = run.json();
    assert_eq!(job["failure"], "pipeline", "{job:#}");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("stage verify failed: main.rs:3: unused variable"),
        "{job:#}"
    );
    assert_eq!(step(&job, "Validation", "stage verify")["status"], "failed");
    for p in [
        "Transfer",
        "Build",
        "Start Service",
        "Verify Health",
        "Register",
    ] {
        assert_eq!(phase(&job, p)["status"], "skipped", "{p}: {job:#}");
    }
    assert!(
        fix.bodies.lock().unwrap().is_empty(),
        "the fixer was never called"
    );
    assert!(
        registry.bodies.lock().unwrap().is_empty(),
        "nothing was registered"
    );
    let announced = hook.bodies.lock().unwrap().clone();
    assert_eq!(announced.len(), 1, "{announced:?}");
    assert!(
        announced[0].1.contains(r#""event":"failure""#),
        "{announced:?}"
    );
    assert!(
        announced[0].1.contains("stage verify failed"),
        "{announced:?}"
    );
    assert_eq!(version_on(port), None);
    assert!(
        !sb.state_dir()
            .join("services")
            .join(&name)
            .join("releases")
            .exists(),
        "nothing was transferred"
    );
    let history = sb.run(&["--json", "history", &name]);
    history.assert_code(0);
    assert_eq!(
        history.json()[0]["failure"],
        "pipeline",
        "the job is recorded"
    );

    // It passes: fix, lint, then the deploy and the registration.
    let good =
        verifier(json!({"status": "completed", "passed": true, "message": "3 checks passed"}));
    let cfg = config(&sb, &good, &fix, &registry);
    let run = sb.run(&[
        "--config",
        &cfg,
        "--json",
        "pipeline",
        "run",
        &name,
        "--port",
        &port_s,
        "--method",
        "process",
        "--droplet-id",
        "25",
        "--intent",
        "say hello",
    ]);
    run.assert_code(0);
    let job = run.json();
    assert_eq!(version_on(port).as_deref(), Some("v1"));
    let verify = step(&job, "Validation", "stage verify");
    assert_eq!(verify["status"], "success");
    assert!(
        verify["details"]
            .as_str()
            .unwrap()
            .contains("passed after 2 polls: 3 checks passed"),
        "{verify}"
    );
    assert_eq!(step(&job, "Validation", "stage fix")["status"], "success");
    assert!(
        step(&job, "Validation", "stage lint")["details"]
            .as_str()
            .unwrap()
            .contains(&format!("lint ok for {name}"))
    );
    let verify_bodies = good.bodies.lock().unwrap().clone();
    let (path, body) = &verify_bodies[0];
    assert_eq!(path, "/verify");
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["intent"], "say hello");
    assert_eq!(body["droplet_name"], name.as_str());
    let fix_body: Value = serde_json::from_str(&fix.bodies.lock().unwrap()[0].1).unwrap();
    assert_eq!(
        fix_body,
        json!({"verification_job_id": "ver-1", "note": "say hello"})
    );
    assert_eq!(phase(&job, "Register")["status"], "success");
    assert_eq!(registry.bodies.lock().unwrap().len(), 1, "registered once");
}

#[test]
fn post_pipeline_runs_the_stages_then_the_deploy() {
    let sb = Sandbox::new();
    let name = sb.name("apiloop");
    sb.track(&name);
    let port = free_port();
    let src = sb.service("hello", "v2");
    let registry = FakeRegistry::start(200);
    let fix = fixer();
    let verify = verifier(json!({"status": "passed"}));
    let cfg = config(&sb, &verify, &fix, &registry);
    let server = Server::start(&sb, src.parent().unwrap(), &[("DEPLOYER_CONFIG", &cfg)]);
    let body = json!({"service_path": src, "service_name": name, "service_port": port,
        "deployment_method": "process", "droplet_id": 26, "intent": "from the api"});
    let (code, accepted) = server.post("/pipeline", Some(&body.to_string()));
    assert_eq!(code, 202, "{accepted}");
    let id = accepted["deploy_job_id"].as_str().unwrap();
    let job = eventually(120, "the pipeline's job to finish", || {
        let (_, job) = server.get(&format!("/deploy/{id}"));
        (job["status"] == "completed" || job["status"] == "failed").then_some(job)
    });
    assert_eq!(job["status"], "completed", "{job:#}");
    assert_eq!(
        step(&job, "Validation", "stage verify")["status"],
        "success"
    );
    assert_eq!(version_on(port).as_deref(), Some("v2"));
    let sent: Value = serde_json::from_str(&verify.bodies.lock().unwrap()[0].1).unwrap();
    assert_eq!(sent["intent"], "from the api");
    let (code, err) = server.post("/pipeline", Some(&json!({"intent": 5}).to_string()));
    assert_eq!(
        (code, err["field"].as_str()),
        (400, Some("intent")),
        "{err}"
    );
}
