use super::*;
use crate::hosting::release::ServiceDirs;
use crate::model::{RunSpec, RuntimeKind};

const REL: &str = "20261126-010000000-abcdef12";

fn ctx() -> ReleaseCtx {
    ReleaseCtx {
        service: "web".into(),
        release: REL.into(),
        dirs: ServiceDirs::new(std::path::Path::new("/srv/deployer"), "web"),
        spec: RunSpec {
            env: [("GREETING".to_string(), "hi there".to_string())].into(),
            swarm: Some(SwarmSpec {
                replicas: 3,
                registry: Some("10.0.0.1:5000".into()),
                constraints: vec!["node.role==worker".into()],
                ..spec(&dummy())
            }),
            ..RunSpec::example(RuntimeKind::Swarm)
        },
        secrets: vec![("API_KEY".into(), Secret::new("sk-very-secret"))],
    }
}

fn dummy() -> ReleaseCtx {
    ReleaseCtx {
        service: "x".into(),
        release: "r".into(),
        dirs: ServiceDirs::new(std::path::Path::new("/"), "x"),
        spec: RunSpec::example(RuntimeKind::Swarm),
        secrets: Vec::new(),
    }
}

fn hello() -> (Vec<String>, Vec<String>) {
    (vec!["/hello".into()], Vec::new())
}

#[test]
fn create_is_exact_and_keeps_environment_and_secrets_out_of_the_spec() {
    let (e, c) = hello();
    let cmd = create_cmd(&ctx(), &e, &c);
    let secret = env_secret_name(&ctx()).unwrap();
    assert_eq!(
        cmd.display(),
        format!(
            "docker service create --name web --detach \
             --label deployer.service=web --label deployer.release={REL} --label deployer.port=8090 \
             --env PORT=8090 --env SERVICE_NAME=web --env RELEASE={REL} \
             --replicas 3 --update-order start-first --update-parallelism 1 --update-delay 0s \
             --update-monitor 5s --update-failure-action rollback --rollback-order start-first \
             --rollback-parallelism 1 --rollback-monitor 5s --stop-grace-period 10s \
             --limit-memory 0 --limit-cpu 0 --network deployer --endpoint-mode dnsrr \
             --constraint node.role==worker --secret source={secret},target=deployer.env \
             --entrypoint '/.deployer/busybox sh -c '\\''set -a; . /run/secrets/deployer.env; set +a; exec \"$@\"'\\'' deployer-env' \
             10.0.0.1:5000/web:{REL} /hello"
        )
    );
    let shown = format!("{cmd:?}");
    assert!(!shown.contains("sk-very-secret") && !shown.contains("hi there"));
    // The secret's content travels in the env of `docker secret create`.
    let make = env_secret_cmd(&ctx(), &secret);
    assert!(!format!("{:?}", make.args).contains("sk-very-secret"));
    assert_eq!(
        env_file(&ctx()),
        "GREETING='hi there'\nAPI_KEY=sk-very-secret\n"
    );
}

#[test]
fn update_swaps_what_changed() {
    let (e, c) = hello();
    let was = RunningSpec {
        release: "old".into(),
        port: 8090,
        replicas: 3,
        secrets: vec!["web-env-000000000000".into()],
        constraints: vec!["node.role==manager".into()],
    };
    let shown = update_cmd(&ctx(), &e, &c, &was).display();
    for want in [
        "docker service update --detach --label-add deployer.service=web",
        "--env-add RELEASE=",
        "--image 10.0.0.1:5000/web:",
        "--secret-rm web-env-000000000000 --secret-add source=web-env-",
        "--constraint-rm node.role==manager --constraint-add node.role==worker",
        "--args /hello web",
    ] {
        assert!(shown.contains(want), "{want} in {shown}");
    }
}

#[test]
fn mesh_publishes_and_no_environment_means_no_wrapper() {
    let mut c = ctx();
    c.spec.env.clear();
    c.secrets.clear();
    if let Some(s) = c.spec.swarm.as_mut() {
        s.publish = SwarmPublish::Mesh;
    }
    let shown = create_cmd(&c, &[], &["python3".into(), "app.py".into()]).display();
    assert!(
        shown.contains("--publish published=8090,target=8090"),
        "{shown}"
    );
    assert!(
        !shown.contains("--secret") && !shown.contains("--entrypoint"),
        "{shown}"
    );
    assert!(shown.ends_with(&format!("10.0.0.1:5000/web:{REL} python3 app.py")));
}

#[test]
fn running_spec_and_entry_are_read_from_docker() {
    let json = r#"{"Name":"web","Labels":{"deployer.release":"r1","deployer.port":"8090"},
      "TaskTemplate":{"ContainerSpec":{"Secrets":[{"SecretName":"web-env-1","File":{}}]},
      "Placement":{"Constraints":["node.role==worker"]}},"Mode":{"Replicated":{"Replicas":3}}}"#;
    let s = RunningSpec::parse(json).unwrap();
    assert_eq!(
        s,
        RunningSpec {
            release: "r1".into(),
            port: 8090,
            replicas: 3,
            secrets: vec!["web-env-1".into()],
            constraints: vec!["node.role==worker".into()],
        }
    );
    assert_eq!(
        parse_entry("[\"/hello\"]\tnull\n"),
        (vec!["/hello".into()], vec![])
    );
    assert_eq!(
        parse_entry("null\t[\"sh\",\"-c\",\"x\"]"),
        (vec![], vec!["sh".into(), "-c".into(), "x".into()])
    );
}

#[test]
fn progress_converges_only_with_every_task_of_the_release_running() {
    let out = "updating|update in progress|3\n\
        task n1aaaaaaaaaaaaaa 10.0.0.1:5000/web:r2@sha256:ab running running \n\
        task n2bbbbbbbbbbbbbb 10.0.0.1:5000/web:r2@sha256:ab starting running \n\
        task n2bbbbbbbbbbbbbb 10.0.0.1:5000/web:r1@sha256:cd running running \n\
        task n2bbbbbbbbbbbbbb 10.0.0.1:5000/web:r2@sha256:ab failed shutdown task: non-zero exit (137)\n\
        task n2bbbbbbbbbbbbbb 10.0.0.1:5000/web:r0@sha256:ef running shutdown \n";
    let p = Progress::parse("r2", out).unwrap();
    assert!(!p.converged() && !p.failed());
    assert_eq!(
        (p.failed_tasks, p.last_error.as_str()),
        (1, "task: non-zero exit (137)")
    );
    assert_eq!(
        p.summary(),
        "1/3 tasks of release r2 running on 1 node (n1aaaaaaaaaa); also r2 starting, r1 running; 1 replaced still stopping; update updating"
    );
    let done = "completed|update completed|2\n\
        task n1aaaaaaaaaaaaaa web:r2 running running \ntask n2bbbbbbbbbbbbbb web:r2 running running \n";
    let p = Progress::parse("r2", done).unwrap();
    assert!(p.converged());
    assert_eq!(p.nodes().len(), 2);
    let created = "||1\ntask n1 web:r2 running running \n";
    assert!(Progress::parse("r2", created).unwrap().converged());
    let back = "rollback_completed|rollback completed|2\n\
        task n1 web:r1 running running \ntask n2 web:r1 running running \n";
    let p = Progress::parse("r2", back).unwrap();
    assert!(p.failed() && p.rolled_back() && !p.converged());
    // ... and, for the undo that waits for the release Swarm went back to:
    assert!(Progress::parse("r1", back).unwrap().converged());
    assert_eq!(
        p.update_said(),
        "Swarm rolled the update back: rollback completed"
    );
}

#[test]
fn build_script_adds_the_health_check_and_pushes() {
    let script = build_script(&ctx());
    assert!(
        script.contains("HEALTHCHECK --interval=1s --timeout=3s --start-period=30s --retries=3")
    );
    assert!(script.contains("http://127.0.0.1:8090/health"));
    assert!(script.contains(&format!("docker push -q 10.0.0.1:5000/web:{REL}")));
    let mut local = ctx();
    if let Some(s) = local.spec.swarm.as_mut() {
        s.registry = None;
    }
    assert!(!build_script(&local).contains("docker push"));
    assert_eq!(registry_image(&local), format!("web:{REL}"));
}
