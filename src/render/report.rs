//! A job's report (`deployer report JOB`): what ran, step by step, with
//! durations, test results, the outcome and the rollback, as text for a
//! terminal or Markdown for a pull request or a chat.

use super::format::{format_ms, printable};
use crate::model::{Job, Phase, PhaseStatus};

/// The outcome in words.
fn outcome(job: &Job) -> String {
    match job.state.failure() {
        None if job.succeeded() => format!(
            "succeeded: release {} is current",
            job.release.as_deref().unwrap_or("?")
        ),
        None => job.state.status().as_str().to_string(),
        Some(kind) => format!(
            "failed ({}): {}",
            kind.as_str(),
            printable(job.state.error().unwrap_or(""))
                .lines()
                .next()
                .unwrap_or("")
        ),
    }
}

fn duration(p: &Phase) -> String {
    p.state.duration_ms().map(format_ms).unwrap_or_default()
}

/// The report as Markdown.
pub fn markdown(job: &Job) -> String {
    let mut out = format!(
        "## {} {} of `{}`\n\n- job: `{}`\n- by: {}\n- method: {}\n- outcome: **{}**\n",
        job.kind.as_str(),
        if job.succeeded() { "✅" } else { "❌" },
        job.service_name,
        job.deploy_job_id,
        job.actor,
        job.deployment_method,
        outcome(job),
    );
    if let Some(prev) = &job.previous_release {
        out.push_str(&format!("- previous release: `{prev}`\n"));
    }
    if let Some(rb) = job.state.rollback() {
        out.push_str(&format!("- rollback: {}\n", printable(&rb.details)));
    }
    out.push_str("\n| phase | step | status | time | details |\n|---|---|---|---|---|\n");
    for p in &job.phases {
        let v = p.view();
        let cell = |s: &str| printable(s).replace('|', "\\|").replace('\n', " ");
        let text = v.error.as_deref().unwrap_or(&v.details);
        out.push_str(&format!(
            "| **{}** | | {} | {} | {} |\n",
            p.name.as_str(),
            v.status.as_str(),
            duration(p),
            cell(text.lines().next().unwrap_or(""))
        ));
        for s in v.steps.iter().filter(|s| s.status != PhaseStatus::Pending) {
            let text = s.error.as_deref().unwrap_or(&s.details);
            out.push_str(&format!(
                "| | {} | {} | {} | {} |\n",
                s.step,
                s.status.as_str(),
                s.duration_ms.map(format_ms).unwrap_or_default(),
                cell(text.lines().next().unwrap_or(""))
            ));
        }
    }
    for n in &job.notifications {
        out.push_str(&format!(
            "\n- notified {} ({}): {}",
            n.kind,
            n.event,
            if n.delivered {
                "delivered"
            } else {
                "not delivered"
            }
        ));
    }
    out.push('\n');
    out
}

/// The report as text for a terminal: each phase, then its steps below.
pub fn text(job: &Job) -> String {
    let mut out = format!(
        "{} of {} ({}) by {}, job {}\n",
        job.kind.as_str(),
        job.service_name,
        job.deployment_method,
        job.actor,
        job.deploy_job_id
    );
    for p in &job.phases {
        out.push_str(&super::format::phase_line(&p.view()));
        out.push('\n');
        for s in &p.view().steps {
            let text = s.error.as_deref().unwrap_or(&s.details);
            out.push_str(&format!(
                "      {:<16} {:<8} {:>8}  {}\n",
                s.step,
                s.status.as_str(),
                s.duration_ms.map(format_ms).unwrap_or_default(),
                printable(text.lines().next().unwrap_or(""))
            ));
        }
    }
    out.push_str(&format!("outcome: {}\n", outcome(job)));
    if let Some(rb) = job.state.rollback() {
        out.push_str(&format!("rollback: {}\n", printable(&rb.details)));
    }
    out
}
