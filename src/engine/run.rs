//! One job under its locks: the job record is written, each host runs the
//! host steps (`host_run.rs`, scheduled by `rollout.rs`), then the job
//! steps run once (`finish.rs`).

use super::records::{self, JobBook};
use super::steps;
use super::{Engine, Event, Sink, Work};
use crate::hosting::site::Site;
use crate::model::*;
use crate::support::error::Failure;
use crate::support::flock::Lock;
use std::time::Instant;

/// A job that may start: its service lock and id, and whether a front end
/// has recorded it already ([`Engine::accept`]).
pub(super) struct Ticket {
    pub lock: Lock,
    pub job_id: String,
    pub accepted: bool,
}

impl Engine {
    /// Takes the hosts' locks, records the job and runs it.
    pub(super) async fn run(
        &self,
        sites: &[Site],
        work: Work,
        validation: Phase,
        ticket: Ticket,
        sink: &dyn Sink,
    ) -> Result<Job, Failure> {
        let (host_locks, notes) = self
            .lock_hosts(sites, &work.service, &ticket.job_id)
            .await?;
        for note in &notes {
            sink.event(&Event::Note(note));
        }
        let service = work.service.clone();
        let result = self
            .run_locked(sites, work, validation, &ticket, sink)
            .await;
        if let Ok(job) = &result
            && job.succeeded()
        {
            self.record_hosts(sites, &service, job, sink).await;
        }
        for failure in host_locks.release().await {
            sink.event(&Event::Note(&format!("warning: {failure}")));
        }
        drop(ticket);
        result
    }

    async fn run_locked(
        &self,
        sites: &[Site],
        work: Work,
        validation: Phase,
        ticket: &Ticket,
        sink: &dyn Sink,
    ) -> Result<Job, Failure> {
        let store = self.store().await?;
        // Holding the lock, no other job of this service can be running: a
        // job marked running had its deployer die mid-way.
        if store.has_dead_jobs(&work.service).await? {
            self.sweep(sites, &work.service, super::recover::BringUp::Current, sink)
                .await?;
        }
        self.opening_audit(store, &work, ticket).await?;
        let mut previous = Vec::with_capacity(sites.len());
        for site in sites {
            previous.push(site.host.current(&site.dirs(&work.service)).await);
        }
        let job = self.first_record(sites, &work, ticket, &validation, &previous);
        if ticket.accepted {
            store.save_job(&job).await?;
        } else {
            store.insert_job(&job).await?;
        }
        let book = JobBook {
            store: store.clone(),
            parent: tokio::sync::Mutex::new(job),
            sink,
        };
        let (host_steps, job_steps) = steps::split(steps::deploy_steps());
        let hosts = super::rollout::Hosts {
            sites,
            book: &book,
            validation: &validation,
            previous,
            sink,
        };
        let (mut work, started) = (work, Instant::now());
        let outcome = self.run_hosts(&hosts, &mut work, &host_steps).await;
        Ok(self
            .finish(&book, &work, outcome, &job_steps, started)
            .await)
    }

    /// Remembers where the service's current release now runs, for the
    /// day-2 commands.
    async fn record_hosts(&self, sites: &[Site], service: &str, job: &Job, sink: &dyn Sink) {
        let hosts: Vec<String> = sites.iter().map(|s| s.host.name()).collect();
        let recorded = match self.store().await {
            Ok(store) => store
                .set_service_hosts(service, &hosts, &job.deploy_job_id)
                .await
                .map_err(Failure::from),
            Err(f) => Err(f),
        };
        if let Err(f) = recorded {
            sink.event(&Event::Note(&format!("warning: {f}")));
        }
    }

    /// Audit lines a job starts with: tests skipped, a dead holder's lock
    /// taken over.
    async fn opening_audit(
        &self,
        store: &crate::store::Store,
        work: &Work,
        ticket: &Ticket,
    ) -> Result<(), Failure> {
        if work.tests.skipped && (work.tests.local.is_some() || work.tests.server.is_some()) {
            let entry = AuditEntry {
                details: "the service's [tests] were skipped (--skip-tests)".into(),
                duration_ms: None,
                ..records::audit_entry(
                    &self.actor,
                    "skip-tests",
                    &work.service,
                    Some(&ticket.job_id),
                    "skipped",
                    Instant::now(),
                )
            };
            store.audit(&entry).await?;
        }
        if let Some(dead) = &ticket.lock.took_over {
            self.audit_took_over(&work.service, &ticket.job_id, dead)
                .await?;
        }
        Ok(())
    }

    /// The audit line for a lock whose holder had died.
    pub(super) async fn audit_took_over(
        &self,
        service: &str,
        job_id: &str,
        dead: &crate::support::flock::Holder,
    ) -> Result<(), Failure> {
        let entry = AuditEntry {
            details: format!("the lock's holder, {dead}, had died"),
            duration_ms: None,
            ..records::audit_entry(
                &self.actor,
                "lock",
                service,
                Some(job_id),
                "taken over",
                Instant::now(),
            )
        };
        self.store().await?.audit(&entry).await?;
        Ok(())
    }

    /// The job as first written: Validation done, the rest pending, and for
    /// a rollout each host in its wave.
    fn first_record(
        &self,
        sites: &[Site],
        work: &Work,
        ticket: &Ticket,
        validation: &Phase,
        previous: &[Option<String>],
    ) -> Job {
        let first = previous.first().cloned().flatten();
        let mut job = records::new_job(self, work, ticket.job_id.clone(), validation, first);
        if sites.len() > 1 {
            job.previous_release = None;
            let waves = work.rollout.waves(sites.len());
            job.hosts = sites
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let wave = waves.iter().position(|w| w.contains(&i)).unwrap_or(0);
                    HostReport::pending(s.host.name(), wave)
                })
                .collect();
        }
        job
    }
}
