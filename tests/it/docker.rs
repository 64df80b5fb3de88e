//! The docker method end to end, against a real Docker engine: images built
//! on this machine from the release, containers with the port published.

use crate::common::*;

#[test]
fn docker_v1_v2_failures_roll_back_and_rollback_command() {
    if !require_docker() {
        return;
    }
    let sb = Sandbox::new();
    let name = &sb.name("dk");
    let port = free_port();
    let j1 = sb
        .deploy(&sb.service("hello", "v1"), name, port, "docker", &[])
        .assert_code(0)
        .json();
    assert_eq!(version_on(port).as_deref(), Some("v1"));
    assert!(
        phase(&j1, "Build")["details"]
            .as_str()
            .unwrap()
            .contains(&format!("Docker image built: {name}:"))
    );
    assert_eq!(j1["deployment_method"], "docker");

    let j2 = sb
        .deploy(
            &sb.service("hello", "v2"),
            name,
            port,
            "docker",
            &["--env", "MODE=green"],
        )
        .assert_code(0)
        .json();
    assert_eq!(version_on(port).as_deref(), Some("v2"));
    assert_eq!(http_get(port, "/env/MODE").unwrap().1, "green");
    assert_eq!(containers_of(name).len(), 1, "one running container");
    // The previous image is kept for rollback; latest is the new one.
    let images = docker(&["images", "--format", "{{.Tag}}", name]);
    assert!(images.contains(j1["release"].as_str().unwrap()), "{images}");
    assert!(images.contains("latest"));

    for (example, code, failed_phase) in [
        ("broken/never-healthy", 4, "Verify Health"),
        ("broken/exits-at-start", 3, "Verify Health"),
        ("broken/fails-to-build", 2, "Build"),
    ] {
        let r = sb.deploy(&sb.service(example, "v3"), name, port, "docker", &[]);
        r.assert_code(code);
        let job = r.json();
        assert_eq!(phase(&job, failed_phase)["status"], "failed", "{example}");
        assert_eq!(job["rollback"]["success"], true, "{example}");
        assert_eq!(
            version_on(port).as_deref(),
            Some("v2"),
            "v2 still answers after {example}"
        );
        assert_eq!(containers_of(name).len(), 1, "{example}");
        assert_eq!(sb.current(name), j2["release"].as_str().map(String::from));
    }

    let rb = sb.run(&["--json", "rollback", name]).assert_code(0).json();
    assert_eq!(rb["release"], j1["release"]);
    assert_eq!(version_on(port).as_deref(), Some("v1"));
    assert_eq!(containers_of(name).len(), 1);

    let history = sb.run(&["--json", "history", name]).assert_code(0).json();
    assert_eq!(history.as_array().unwrap().len(), 6);
    let audit = sb
        .run(&["--json", "audit", "--service", name])
        .assert_code(0)
        .json();
    let outcomes: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        [
            "success",
            "success",
            "failed (health)",
            "failed (start)",
            "failed (build)",
            "success"
        ]
    );
}

#[test]
fn docker_redeploy_of_same_content_leaves_one_container() {
    if !require_docker() {
        return;
    }
    let sb = Sandbox::new();
    let name = &sb.name("dkr");
    let port = free_port();
    let src = sb.service("hello", "v1");
    add_to_manifest(&src, "[limits]\nmemory = \"64m\"\ncpus = 0.5\n");
    // DEFAULT_NETWORK (the seed's name) puts the container on a network,
    // created when missing.
    let net = format!("{name}-net");
    let env = [("DEFAULT_NETWORK", net.as_str())];
    sb.deploy_env(&src, name, port, "docker", &[], &env)
        .assert_code(0);
    sb.deploy_env(&src, name, port, "docker", &[], &env)
        .assert_code(0);
    assert_eq!(containers_of(name).len(), 1);
    let networks = docker(&[
        "inspect",
        "--format",
        "{{json .NetworkSettings.Networks}}",
        &containers_of(name)[0],
    ]);
    assert!(networks.contains(&format!("\"{net}\"")), "{networks}");
    let restart = docker(&[
        "inspect",
        "--format",
        "{{.HostConfig.RestartPolicy.Name}}",
        &containers_of(name)[0],
    ]);
    assert_eq!(restart.trim(), "unless-stopped");
    let limits = docker(&[
        "inspect",
        "--format",
        "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}}",
        &containers_of(name)[0],
    ]);
    assert_eq!(limits.trim(), "67108864 500000000", "[limits] reach docker");
    assert_eq!(version_on(port).as_deref(), Some("v1"));
    logs_show_and_follow(&sb, name, &[]);
    assert_eq!(version_on(port).as_deref(), Some("v1"));
}

#[test]
fn auto_picks_docker_when_an_engine_answers() {
    if !require_docker() {
        return;
    }
    let sb = Sandbox::new();
    let name = &sb.name("dka");
    let port = free_port();
    let job = sb
        .deploy(&sb.service("hello", "v1"), name, port, "auto", &[])
        .assert_code(0)
        .json();
    assert_eq!(job["deployment_method"], "docker");
    assert_eq!(containers_of(name).len(), 1);
}

#[test]
fn docker_secret_reaches_the_container_but_no_output_or_file() {
    if !require_docker() {
        return;
    }
    const SECRET: &str = "dk-secret-93b1e0aa7f-never-show";
    let sb = Sandbox::new();
    let name = &sb.name("dks");
    let port = free_port();
    let src = sb.service("hello", "v1");
    let r = sb.deploy_env(
        &src,
        name,
        port,
        "docker",
        &["--secret", "API_KEY"],
        &[("API_KEY", SECRET)],
    );
    r.assert_code(0);
    assert_eq!(http_get(port, "/env/API_KEY").unwrap().1, SECRET);
    let audit = sb.run(&["--json", "audit"]);
    for out in [&r.stdout, &r.stderr, &audit.stdout] {
        assert!(!out.contains(SECRET));
    }
    for f in files_under(&sb.state_dir()) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "secret in {}",
            f.display()
        );
    }
    // Not on the docker command line either: the container's recorded args.
    let args = docker(&[
        "inspect",
        "--format",
        "{{json .Args}} {{json .Config.Cmd}}",
        &containers_of(name)[0],
    ]);
    assert!(!args.contains(SECRET), "{args}");
}

#[test]
fn docker_ports_publish_the_containers_port_on_another_host_port() {
    if !require_docker() {
        return;
    }
    let sb = Sandbox::new();
    let name = &sb.name("ports");
    sb.track(name);
    let port = free_port();
    let src = sb.service("hello", "v1");
    // The service listens on 80 in its container (PORT=80); the host sees it on `port`.
    let manifest = std::fs::read_to_string(src.join("service.toml"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("port ="))
        .map(|l| format!("{l}\n"))
        .collect::<String>();
    std::fs::write(src.join("service.toml"), manifest).unwrap();
    add_to_manifest(&src, &format!("[docker]\nports = \"{port}:80\"\n"));
    let run = sb.run(&[
        "--json",
        "deploy",
        src.to_str().unwrap(),
        "--name",
        name,
        "--method",
        "docker",
    ]);
    run.assert_code(0);
    assert_eq!(version_on(port).as_deref(), Some("v1"));
    let mapped = docker(&["port", &containers_of(name)[0]]);
    assert!(
        mapped.contains(&format!("80/tcp -> 0.0.0.0:{port}")),
        "{mapped}"
    );
    let bad = sb.deploy(&src, name, port + 1, "docker", &[]);
    bad.assert_code(10);
    assert!(bad.stderr.contains("disagree"), "{}", bad.stderr);
}
