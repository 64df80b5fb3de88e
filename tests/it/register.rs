//! The Register phase against a real HTTP server on loopback.

use crate::common::*;

/// A sandbox with a deployer.toml naming `registry_url`; returns the
/// `--config FILE` flags.
fn config_with_registry(sb: &Sandbox, url: &str) -> [String; 2] {
    let cfg = sb.dir.path().join("deployer.toml");
    std::fs::write(&cfg, format!("registry_url = {url:?}\n")).unwrap();
    ["--config".to_string(), cfg.to_str().unwrap().to_string()]
}

#[test]
fn registers_with_droplet_id_name_and_endpoint() {
    let sb = Sandbox::new();
    let name = &sb.name("reg");
    let port = free_port();
    let registry = FakeRegistry::start(200);
    let [flag, cfg] = config_with_registry(&sb, &registry.url());
    let src = sb.service("hello", "v1");
    let job = sb
        .deploy(
            &src,
            name,
            port,
            "process",
            &[&flag, &cfg, "--droplet-id", "20"],
        )
        .assert_code(0)
        .json();
    assert_eq!(phase(&job, "Register")["status"], "success");
    assert_eq!(
        phase(&job, "Register")["details"],
        "Registered as Droplet #20"
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    assert_eq!(job["registration"]["endpoint"], endpoint.as_str());
    assert_eq!(
        job["registration"]["registry_response"]["status"],
        "registered"
    );
    let bodies = registry.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0].0, "/register");
    let body: serde_json::Value = serde_json::from_str(&bodies[0].1).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"droplet_id": 20, "service_name": name, "endpoint": endpoint})
    );
}

#[test]
fn registry_errors_fail_register_with_exit_6_but_leave_the_service_up() {
    let sb = Sandbox::new();
    let name = &sb.name("regfail");
    let port = free_port();
    let registry = FakeRegistry::start(500);
    let [flag, cfg] = config_with_registry(&sb, &registry.url());
    let src = sb.service("hello", "v1");
    let r = sb.deploy(
        &src,
        name,
        port,
        "process",
        &[&flag, &cfg, "--droplet-id", "3"],
    );
    r.assert_code(6);
    let job = r.json();
    let err = phase(&job, "Register")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(err.contains("answered 500"), "{err}");
    assert_eq!(version_on(port).as_deref(), Some("v1"));
    assert_eq!(sb.current(name), job["release"].as_str().map(String::from));

    // Nothing listening at all: the error says unreachable.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let r = sb.deploy_env(
        &src,
        name,
        port,
        "process",
        &["--droplet-id", "3"],
        &[("REGISTRY_URL", &dead)],
    );
    r.assert_code(6);
    let err = phase(&r.json(), "Register")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(err.contains("unreachable"), "{err}");
}

#[test]
fn register_is_skipped_with_a_reason() {
    let sb = Sandbox::new();
    let name = &sb.name("noreg");
    let port = free_port();
    let registry = FakeRegistry::start(200);
    let [flag, cfg] = config_with_registry(&sb, &registry.url());
    let src = sb.service("hello", "v1");
    let job = sb
        .deploy(&src, name, port, "process", &[&flag, &cfg, "--no-register"])
        .assert_code(0)
        .json();
    assert_eq!(phase(&job, "Register")["status"], "skipped");
    let details = phase(&job, "Register")["details"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(details.contains("--no-register"), "{details}");
    assert!(registry.bodies.lock().unwrap().is_empty());
    // A registry but no droplet id: refused up front, with what to do.
    let r = sb.deploy(&src, name, port, "process", &[&flag, &cfg]);
    r.assert_code(10);
    assert!(r.stderr.contains("no droplet_id"), "{}", r.stderr);
}

#[test]
fn the_seeds_env_file_names_the_registry_below_the_environment() {
    let sb = Sandbox::new();
    let name = &sb.name("dotenv");
    let port = free_port();
    let from_file = FakeRegistry::start(200);
    let from_env = FakeRegistry::start(200);
    std::fs::write(
        sb.dir.path().join(".env"),
        format!(
            "# Registry\nREGISTRY_URL={}\nDEPLOYMENT_METHOD=process  # or docker\n",
            from_file.url()
        ),
    )
    .unwrap();
    let src = sb.service("hello", "v1");
    let job = sb
        .deploy(&src, name, port, "process", &["--droplet-id", "31"])
        .assert_code(0)
        .json();
    assert_eq!(phase(&job, "Register")["status"], "success", "{job:#}");
    assert_eq!(
        from_file.bodies.lock().unwrap().len(),
        1,
        "registered via .env"
    );

    let url = from_env.url();
    let v2 = sb.service("hello", "v2");
    let flags = ["--droplet-id", "31"];
    sb.deploy_env(
        &v2,
        name,
        port,
        "process",
        &flags,
        &[("REGISTRY_URL", &url)],
    )
    .assert_code(0);
    assert_eq!(
        from_env.bodies.lock().unwrap().len(),
        1,
        "the environment wins"
    );
    assert_eq!(from_file.bodies.lock().unwrap().len(), 1);
}

#[test]
fn rollbacks_are_reported_to_the_registry_as_events() {
    let sb = Sandbox::new();
    let name = &sb.name("rbevent");
    let port = free_port();
    let registry = FakeRegistry::start(200);
    let [flag, cfg] = config_with_registry(&sb, &registry.url());
    let with = |extra: &[&str]| -> Vec<String> {
        let mut v = vec![
            flag.clone(),
            cfg.clone(),
            "--droplet-id".into(),
            "40".into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let deploy = |example: &str, version: &str| {
        let args = with(&[]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sb.deploy(&sb.prebuilt(example, version), name, port, "process", &args)
    };
    let j1 = deploy("hello", "v1").assert_code(0).json();
    let j2 = deploy("hello", "v2").assert_code(0).json();
    let events = || -> Vec<serde_json::Value> {
        registry
            .bodies
            .lock()
            .unwrap()
            .iter()
            .filter(|(path, _)| path == "/events")
            .map(|(_, b)| serde_json::from_str(b).unwrap())
            .collect()
    };
    assert!(events().is_empty(), "no rollback yet");

    // The engine rolls a failed deploy back: an automatic rollback event.
    let bad = deploy("broken/never-healthy", "v3");
    bad.assert_code(4);
    let e = events();
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0]["event"], "rollback");
    assert_eq!(e[0]["trigger"], "automatic");
    assert_eq!(e[0]["to_release"], j2["release"]);
    assert_eq!(e[0]["droplet_id"], 40);
    let job = bad.json();
    let n = job["notifications"].as_array().unwrap();
    assert!(
        n.iter()
            .any(|n| n["kind"] == "registry" && n["delivered"] == true),
        "{job:#}"
    );

    // A manual rollback: reported too, after the registration.
    let run = sb.run(&[&flag, &cfg, "--json", "rollback", name]);
    run.assert_code(0);
    let e = events();
    assert_eq!(e.len(), 2, "{e:?}");
    assert_eq!(e[1]["trigger"], "manual");
    assert_eq!(e[1]["from_release"], j2["release"]);
    assert_eq!(e[1]["to_release"], j1["release"]);
    assert_eq!(version_on(port).as_deref(), Some("v1"));
}
