//! Jobs accepted to run in the background (`deployer serve`): a bounded
//! queue of accepted jobs, the workers they run on, and each running job's
//! live events. The engine owns them; a front end asks for a place, hands
//! over an accepted job, and subscribes to its stream.

use super::{Engine, Event, Sink, StreamEvent};
use crate::input::plan::Plan;
use crate::model::Job;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Semaphore, broadcast};

/// The queue is full: how many jobs wait already.
#[derive(Debug, thiserror::Error)]
#[error("{0} deploys are queued already (the most this server takes); try again later")]
pub struct QueueFull(pub usize);

/// The jobs a server runs in the background.
pub struct JobQueue {
    workers: Arc<Semaphore>,
    queued: Arc<AtomicUsize>,
    max_queued: usize,
    streams: Mutex<HashMap<String, broadcast::Sender<StreamEvent>>>,
}

/// A job's place in the queue, given back when dropped.
pub struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl JobQueue {
    /// `workers` jobs run at once; at most `max_queued` are accepted and
    /// not finished.
    pub fn new(workers: usize, max_queued: usize) -> Arc<JobQueue> {
        Arc::new(JobQueue {
            workers: Arc::new(Semaphore::new(workers.max(1))),
            queued: Default::default(),
            max_queued: max_queued.max(1),
            streams: Mutex::new(HashMap::new()),
        })
    }

    /// A place in the queue, or how full it is.
    pub fn place(&self) -> Result<Place, QueueFull> {
        let max = self.max_queued;
        let taken = self
            .queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(Place(self.queued.clone())),
            Err(n) => Err(QueueFull(n)),
        }
    }

    /// An engine whose jobs run only on this queue's workers (a job takes
    /// a worker once it holds its service's lock).
    pub fn engine(&self, engine: Engine) -> Engine {
        engine.with_gate(self.workers.clone())
    }

    /// The live events of a job still running; `None` once it ended.
    pub fn subscribe(&self, job_id: &str) -> Option<broadcast::Receiver<StreamEvent>> {
        let streams = self.streams.lock().unwrap();
        streams.get(job_id).map(|tx| tx.subscribe())
    }

    /// Runs a job [`Engine::accept`] recorded, in the background, holding
    /// `place`; its events go to its stream, which closes with the job as
    /// stored. `ended` hears the finished job (a front end's metrics and
    /// caches).
    pub fn run(
        self: &Arc<Self>,
        engine: Engine,
        plan: Plan,
        accepted: Job,
        place: Place,
        ended: impl FnOnce(&Job) + Send + 'static,
    ) {
        let (tx, _) = broadcast::channel(1024);
        let id = accepted.deploy_job_id.clone();
        self.streams.lock().unwrap().insert(id.clone(), tx.clone());
        let queue = self.clone();
        tokio::spawn(async move {
            let _place = place;
            let sink = StreamSink { tx: tx.clone() };
            let job = engine.submit(plan, &accepted, &sink).await;
            ended(&job);
            let _ = tx.send(StreamEvent::Done { job: Box::new(job) });
            queue.streams.lock().unwrap().remove(&id);
        });
    }
}

/// Sends a job's events to its live stream.
struct StreamSink {
    tx: broadcast::Sender<StreamEvent>,
}

impl Sink for StreamSink {
    fn event(&self, e: &Event) {
        // The stream's closing `done` carries the job as stored, sent by
        // the queue once the job has ended.
        if !matches!(e, Event::JobFinished(_)) {
            let _ = self.tx.send(StreamEvent::from_event(e));
        }
    }
}
