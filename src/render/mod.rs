//! Output for people: events and jobs as lines (`output`), shared
//! formatting (`format`), and a job's report (`report`).

pub mod format;
pub mod output;
pub mod report;
