//! Finished jobs as the API last serialised them: a finished job never
//! changes, so `GET /deploy/{id}` answers it from memory without asking
//! the database or serialising it again.

use axum::body::Bytes;
use std::collections::HashMap;
use std::sync::Mutex;

/// How long after it finished a job another deployer may still write to
/// it (its notifications, retried, are recorded after it ends).
const SETTLE: chrono::TimeDelta = chrono::TimeDelta::minutes(5);
/// Jobs kept; past this the cache starts again.
const CAPACITY: usize = 10_000;

#[derive(Default)]
pub struct JobCache {
    jobs: Mutex<HashMap<String, Bytes>>,
}

impl JobCache {
    pub fn get(&self, id: &str) -> Option<Bytes> {
        self.jobs.lock().unwrap().get(id).cloned()
    }

    /// Keeps a job's JSON when the job finished long enough ago that
    /// nothing writes to it any more.
    pub fn offer(&self, job: &crate::model::Job, json: &Bytes) {
        let settled = job
            .state
            .completed_at()
            .is_some_and(|t| chrono::Utc::now() - t > SETTLE);
        if settled {
            self.insert(&job.deploy_job_id, json.clone());
        }
    }

    /// Keeps a job this server ran, as it ended (nothing writes to it
    /// after that).
    pub fn ended(&self, job: &crate::model::Job) {
        if job.state.completed_at().is_some()
            && let Ok(json) = serde_json::to_vec(job)
        {
            self.insert(&job.deploy_job_id, Bytes::from(json));
        }
    }

    fn insert(&self, id: &str, json: Bytes) {
        let mut jobs = self.jobs.lock().unwrap();
        if jobs.len() >= CAPACITY {
            jobs.clear();
        }
        jobs.insert(id.to_string(), json);
    }
}
