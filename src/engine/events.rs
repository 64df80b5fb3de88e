//! What a job tells its front end as it runs: [`Event`]s pushed to a
//! [`Sink`] (the CLI renders them, the API streams them), and
//! [`StreamEvent`], their one serde form, written by the SSE endpoint and
//! read back by `deploy --server`.

use crate::model::{Job, PhaseName, PhaseView};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// Something that happened in a job, pushed to the front end as it happens.
#[derive(Clone, Debug)]
pub enum Event<'a> {
    PhaseStarted(PhaseName),
    PhaseFinished(&'a PhaseView),
    /// Bytes of a release sent so far (uploads only).
    TransferProgress {
        sent: u64,
        total: u64,
    },
    /// A phase finished on one host of a rollout.
    HostPhaseFinished(&'a str, &'a PhaseView),
    /// A line of progress worth showing (stopping a release, rolling back).
    Note(&'a str),
    JobFinished(&'a Job),
}

/// Receives a job's events.
pub trait Sink: Send + Sync {
    fn event(&self, e: &Event);
}

/// Hears nothing: for work no one watches (a sweep before `stop`, `--json`).
pub struct Quiet;

impl Sink for Quiet {
    fn event(&self, _: &Event) {}
}

/// An event as the live stream carries it: one JSON object per event, with
/// `event` = phase_started | phase | note | progress | done.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum StreamEvent {
    PhaseStarted {
        phase: PhaseName,
    },
    Phase {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        phase: PhaseView,
    },
    Note {
        text: String,
    },
    Progress {
        sent: u64,
        total: u64,
    },
    Done {
        job: Box<Job>,
    },
}

impl StreamEvent {
    pub fn from_event(e: &Event) -> StreamEvent {
        match e {
            Event::PhaseStarted(p) => StreamEvent::PhaseStarted { phase: *p },
            Event::PhaseFinished(v) => StreamEvent::Phase {
                host: None,
                phase: (*v).clone(),
            },
            Event::HostPhaseFinished(h, v) => StreamEvent::Phase {
                host: Some(h.to_string()),
                phase: (*v).clone(),
            },
            Event::Note(n) => StreamEvent::Note {
                text: n.to_string(),
            },
            Event::TransferProgress { sent, total } => StreamEvent::Progress {
                sent: *sent,
                total: *total,
            },
            Event::JobFinished(j) => StreamEvent::Done {
                job: Box::new((*j).clone()),
            },
        }
    }

    /// Pushes the event to a sink, as the engine would have.
    pub fn replay(&self, sink: &dyn Sink) {
        match self {
            StreamEvent::PhaseStarted { phase } => sink.event(&Event::PhaseStarted(*phase)),
            StreamEvent::Phase {
                host: Some(h),
                phase,
            } => sink.event(&Event::HostPhaseFinished(h, phase)),
            StreamEvent::Phase { host: None, phase } => sink.event(&Event::PhaseFinished(phase)),
            StreamEvent::Note { text } => sink.event(&Event::Note(text)),
            StreamEvent::Progress { sent, total } => sink.event(&Event::TransferProgress {
                sent: *sent,
                total: *total,
            }),
            StreamEvent::Done { job } => sink.event(&Event::JobFinished(job)),
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, StreamEvent::Done { .. })
    }
}

/// Shows a host's events with the host's name, inside a rollout.
pub(super) struct HostSink<'a> {
    pub inner: &'a dyn Sink,
    pub host: String,
}

impl Sink for HostSink<'_> {
    fn event(&self, e: &Event) {
        match e {
            Event::PhaseFinished(v) => self.inner.event(&Event::HostPhaseFinished(&self.host, v)),
            Event::Note(n) => self
                .inner
                .event(&Event::Note(&format!("[{}] {n}", self.host))),
            Event::PhaseStarted(_)
            | Event::HostPhaseFinished(..)
            | Event::JobFinished(_)
            | Event::TransferProgress { .. } => {}
        }
    }
}

/// Passes events on and keeps the Validation phase, for a job refused
/// before it ran.
pub(super) struct Remember<'a> {
    inner: &'a dyn Sink,
    validation: Mutex<Option<PhaseView>>,
}

impl<'a> Remember<'a> {
    pub fn new(inner: &'a dyn Sink) -> Self {
        Remember {
            inner,
            validation: Mutex::new(None),
        }
    }

    pub fn validation(&self) -> Option<PhaseView> {
        self.validation.lock().unwrap().clone()
    }
}

impl Sink for Remember<'_> {
    fn event(&self, e: &Event) {
        if let Event::PhaseFinished(v) = e
            && v.phase == PhaseName::Validation
        {
            *self.validation.lock().unwrap() = Some((*v).clone());
        }
        self.inner.event(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Phase;

    #[test]
    fn stream_events_keep_the_wire_shape() {
        let view = Phase::pending(PhaseName::Build).view();
        let e = StreamEvent::from_event(&Event::HostPhaseFinished("h1", &view));
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["event"], "phase");
        assert_eq!(json["host"], "h1");
        assert_eq!(json["phase"]["phase"], "Build");
        let plain = StreamEvent::from_event(&Event::PhaseFinished(&view));
        let text = serde_json::to_string(&plain).unwrap();
        assert!(!text.contains("host"), "{text}");
        assert_eq!(serde_json::from_str::<StreamEvent>(&text).unwrap(), plain);
        let note = serde_json::to_value(StreamEvent::from_event(&Event::Note("hi"))).unwrap();
        assert_eq!(note, serde_json::json!({"event": "note", "text": "hi"}));
    }
}
