//! The step list failing at each step in turn, against the scripted
//! runtime (no Docker, no sshd) and a real SQLite store and HTTP health
//! endpoint on loopback: which undos run, in which order, and how the job
//! ends.

use super::*;
use crate::engine::records::JobBook;
use crate::engine::steps;
use crate::engine::{Engine, Quiet, Work};
use crate::hosting::runtime::scripted::ScriptedRuntime;
use crate::hosting::site::{Site, TargetSpec};
use crate::input::plan::RegisterPlan;
use crate::store::Store;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A health endpoint that answers as the scripted runtime's running
/// release would: 200, 500 when sick, nothing when it died or none runs.
async fn health_server(runtime: ScriptedRuntime) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let Some(status) = runtime.health() else {
                continue;
            };
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf).await;
            let answer =
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = conn.write_all(answer.as_bytes()).await;
        }
    });
    port
}

fn work(src: &Path, port: u16, register: RegisterPlan) -> Work {
    let mut work = Work::example("web", src);
    work.spec.port = port;
    work.spec.health.timeout_secs = 1;
    work.spec.health.retries = 1;
    work.service_url = format!("http://127.0.0.1:{port}");
    work.register = register;
    work
}

/// One job on the scripted site; the job and the undos it ran.
async fn run_job(
    engine: &Engine,
    site: &Site,
    store: &Store,
    work: &Work,
    previous: Option<String>,
) -> (Job, Vec<String>) {
    let id = crate::engine::new_job_id();
    let validation = super::super::validate::passed("checked".into());
    let job = records::new_job(engine, work, id.clone(), &validation, previous.clone());
    store.insert_job(&job).await.unwrap();
    let book = JobBook {
        store: store.clone(),
        parent: tokio::sync::Mutex::new(job),
        sink: &Quiet,
    };
    let (host_steps, job_steps) = steps::split(steps::deploy_steps());
    let started = std::time::Instant::now();
    let mut run = JobRun::new(engine, site, &book, 0, &Quiet, work);
    run.start(&validation, previous, &id);
    if run.prepare(&host_steps).await {
        run.complete(&host_steps).await;
    }
    let outcome = match run.job.state.failure() {
        None => Ok(()),
        Some(kind) => Err(crate::engine::rollout::HostsFailed {
            kind,
            error: run.job.state.error().unwrap_or_default().to_string(),
            rollback: run.job.state.rollback().cloned(),
        }),
    };
    let job = engine
        .finish(&book, work, outcome, &job_steps, started)
        .await;
    (job, run.undone)
}

/// What one row of the table ends with.
struct Outcome {
    job: Job,
    undone: Vec<String>,
    running: Option<String>,
    current: Option<String>,
    r1: String,
    r2: String,
    stored: Job,
}

/// Deploys v1 cleanly, then v2 with `fail` scripted (and `register`).
async fn second_deploy(
    fail: &[&'static str],
    register: RegisterPlan,
    lose_source: bool,
    tests: crate::input::plan::TestsPlan,
) -> Outcome {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let runtime = ScriptedRuntime::default();
    let port = health_server(runtime.clone()).await;
    runtime.script.lock().unwrap().port = port;
    let site = Site::scripted(dir.path(), runtime.clone());
    let store = Store::open(dir.path()).await.unwrap();
    let engine = Engine::new(
        Default::default(),
        dir.path().to_path_buf(),
        Duration::ZERO,
        vec![TargetSpec::Local],
    )
    .with_store(store.clone());
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("VERSION"), "v1").unwrap();
    let w = work(
        &src,
        port,
        RegisterPlan::Skip {
            reason: "none".into(),
        },
    );
    let (first, _) = run_job(&engine, &site, &store, &w, None).await;
    assert!(first.succeeded(), "{:?}", first.state);
    let r1 = first.release.clone().unwrap();
    {
        let mut s = runtime.script.lock().unwrap();
        s.good = Some(r1.clone());
        s.fail = fail.to_vec();
    }
    std::fs::write(src.join("VERSION"), "v2").unwrap();
    if lose_source {
        std::fs::remove_dir_all(&src).unwrap();
    }
    let mut w = work(&src, port, register);
    w.tests = tests;
    let (job, undone) = run_job(&engine, &site, &store, &w, Some(r1.clone())).await;
    let r2 = job.release.clone().unwrap_or_else(|| "-".into());
    let stored = store.job(&job.deploy_job_id).await.unwrap().unwrap();
    let dirs = site.dirs("web");
    let running = runtime.script.lock().unwrap().running.clone();
    Outcome {
        running,
        current: site.host.current(&dirs).await,
        job,
        undone,
        r1,
        r2,
        stored,
    }
}

/// A job's JSON without its times (the store keeps milliseconds).
fn shape(job: &Job) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                for k in [
                    "started_at",
                    "completed_at",
                    "duration_ms",
                    "duration_seconds",
                ] {
                    m.remove(k);
                }
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(job).unwrap();
    strip(&mut v);
    v
}

fn phase_status(job: &Job, name: PhaseName) -> PhaseStatus {
    job.phase(name).status()
}

/// One row of the table: what goes wrong in the second deploy, and what a
/// user must see after it.
struct Row {
    fail: &'static [&'static str],
    /// Register with a registry that refuses connections.
    registry_down: bool,
    /// The service directory is gone before Transfer.
    source_gone: bool,
    /// `[tests] local` and `server` of the second deploy.
    tests: (Option<&'static str>, Option<&'static str>),
    kind: Option<FailureKind>,
    /// The undos run, newest first (R1 = the first release, R2 = the new).
    undos: &'static [&'static str],
    failed_phase: Option<PhaseName>,
    /// What runs at the end ("-" for nothing).
    runs: &'static str,
}

const FULL_UNWIND: &[&str] = &[
    "stop release R2",
    "restart release R1",
    "remove the build of R2",
    "remove release R2",
];

fn rows() -> Vec<Row> {
    let row = |fail, kind, undos, failed_phase, runs| Row {
        fail,
        registry_down: false,
        source_gone: false,
        tests: (None, None),
        kind: Some(kind),
        undos,
        failed_phase: Some(failed_phase),
        runs,
    };
    use FailureKind as K;
    use PhaseName as P;
    vec![
        Row {
            source_gone: true,
            ..row(&[], K::Transfer, &[], P::Transfer, "R1")
        },
        Row {
            tests: (Some("echo 3 passed; exit 1"), None),
            ..row(&[], K::Tests, &[], P::Transfer, "R1")
        },
        row(&["build"], K::Build, &["remove release R2"], P::Build, "R1"),
        Row {
            tests: (Some("true"), Some("test -f VERSION && exit 1")),
            ..row(
                &[],
                K::Tests,
                &["remove the build of R2", "remove release R2"],
                P::Build,
                "R1",
            )
        },
        row(
            &["stop-good"],
            K::Start,
            &["remove the build of R2", "remove release R2"],
            P::StartService,
            "R1",
        ),
        row(&["start"], K::Start, FULL_UNWIND, P::StartService, "R1"),
        row(&["exit"], K::Start, FULL_UNWIND, P::VerifyHealth, "R1"),
        row(&["sick"], K::Health, FULL_UNWIND, P::VerifyHealth, "R1"),
        row(
            &["start", "start-good"],
            K::RollbackFailed,
            FULL_UNWIND,
            P::StartService,
            "-",
        ),
        Row {
            registry_down: true,
            ..row(&[], K::Register, &[], P::Register, "R2")
        },
        Row {
            kind: None,
            failed_phase: None,
            ..row(&[], K::Internal, &[], P::Register, "R2")
        },
    ]
}

#[tokio::test]
async fn a_failure_at_each_step_unwinds_the_steps_before_it_newest_first() {
    for row in rows() {
        let t = std::time::Instant::now();
        let register = if row.registry_down {
            RegisterPlan::To {
                registry_url: "http://127.0.0.1:1".into(),
                droplet_id: 7,
            }
        } else {
            RegisterPlan::Skip {
                reason: "none".into(),
            }
        };
        let tests = crate::input::plan::TestsPlan {
            local: row.tests.0.map(str::to_string),
            server: row.tests.1.map(str::to_string),
            skipped: false,
        };
        let o = second_deploy(row.fail, register, row.source_gone, tests).await;
        check(&row, &o);
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "{:?}: took {took:?}",
            row.fail
        );
    }
}

fn check(row: &Row, o: &Outcome) {
    let name = |s: &str| s.replace("R1", &o.r1).replace("R2", &o.r2);
    let what = format!("{:?} source_gone={}", row.fail, row.source_gone);
    assert_eq!(o.job.state.failure(), row.kind, "{what}: {:?}", o.job.state);
    let expected: Vec<String> = row.undos.iter().map(|u| name(u)).collect();
    assert_eq!(o.undone, expected, "{what}: undo order");
    let running = (row.runs != "-").then(|| name(row.runs));
    assert_eq!(o.running, running, "{what}: what runs at the end");
    // `current` only moves once the new release is healthy.
    let current = if row.runs == "R2" { &o.r2 } else { &o.r1 };
    assert_eq!(o.current.as_ref(), Some(current), "{what}: current");
    assert_eq!(shape(&o.stored), shape(&o.job), "{what}: the stored job");
    let has_record = o.job.state.rollback().is_some();
    assert_eq!(has_record, !row.undos.is_empty(), "{what}: rollback record");
    let Some(p) = row.failed_phase else {
        assert!(o.job.succeeded());
        assert_eq!(
            phase_status(&o.job, PhaseName::Register),
            PhaseStatus::Skipped
        );
        return;
    };
    assert_eq!(phase_status(&o.job, p), PhaseStatus::Failed, "{what}");
    for later in &PhaseName::ALL[p.index() + 1..] {
        assert_eq!(phase_status(&o.job, *later), PhaseStatus::Skipped, "{what}");
        let reason = o.job.phase(*later).view().details;
        assert_eq!(reason, format!("not run: {} failed", p.as_str()));
    }
    assert!(o.job.state.error().is_some_and(|e| !e.is_empty()), "{what}");
}

#[tokio::test]
async fn each_phase_records_its_steps() {
    let tests = crate::input::plan::TestsPlan {
        local: Some("echo 'test result: ok. 3 passed; 0 failed'".into()),
        ..Default::default()
    };
    let o = second_deploy(
        &["start"],
        RegisterPlan::Skip {
            reason: "none".into(),
        },
        false,
        tests,
    )
    .await;
    let transfer = o.job.phase(PhaseName::Transfer).view();
    assert_eq!(transfer.steps[0].step, "local tests");
    assert!(
        transfer.details.contains("3 passed, 0 failed (cargo test)"),
        "{}",
        transfer.details
    );
    assert_eq!(transfer.steps[0].status, PhaseStatus::Success);
    let start = o.job.phase(PhaseName::StartService);
    let steps: Vec<(String, PhaseStatus)> = start
        .steps
        .iter()
        .map(|s| (s.name.clone(), s.state.status()))
        .collect();
    assert_eq!(
        steps,
        vec![
            ("backup".to_string(), PhaseStatus::Skipped),
            ("migrate".to_string(), PhaseStatus::Skipped),
            ("stop old".to_string(), PhaseStatus::Success),
            ("start new".to_string(), PhaseStatus::Failed),
        ]
    );
    let view = start.view();
    assert_eq!(view.steps[2].details, format!("stopped release {}", o.r1));
    assert!(
        view.steps[3]
            .error
            .as_deref()
            .unwrap()
            .contains("would not start")
    );
    let build = o.job.phase(PhaseName::Build).view();
    assert_eq!(build.steps[0].status, PhaseStatus::Skipped);
    assert_eq!(build.steps[0].details, "not a Python service");
    assert_eq!(build.steps[1].details, "no build command");
    assert_eq!(build.details, format!("built {}", o.r2));
}
