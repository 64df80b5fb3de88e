//! Rendering for people: one line per phase with ✓/✗ and its duration,
//! notes as they happen, then a summary. Colour follows NO_COLOR and whether
//! stdout is a terminal (anstream decides); `--json` prints the job instead.

use crate::engine::{Event, Sink};
use crate::model::Job;
use anstream::println;

use super::format::{BOLD, DIM, GREEN, RED};
pub use super::format::{format_ms, phase_line, printable};

/// Prints a job's events as they arrive, with a progress bar for uploads
/// when stdout is a terminal.
#[derive(Default)]
pub struct Human {
    bar: std::sync::Mutex<Option<indicatif::ProgressBar>>,
}

impl Human {
    fn clear_bar(&self) {
        if let Some(bar) = self.bar.lock().unwrap().take() {
            bar.finish_and_clear();
        }
    }
}

/// Prints only notes, on stderr: what recovery did before a command.
pub struct Notes;

impl Sink for Notes {
    fn event(&self, e: &Event) {
        if let Event::Note(n) = e {
            eprintln!("  {}", printable(n));
        }
    }
}

/// Prints nothing as a job runs (`--json` prints the finished job).
pub use crate::engine::Quiet;

impl Sink for Human {
    fn event(&self, e: &Event) {
        match e {
            Event::PhaseStarted(_) => {}
            Event::TransferProgress { sent, total } => {
                use std::io::IsTerminal;
                if !std::io::stdout().is_terminal() {
                    return;
                }
                let mut bar = self.bar.lock().unwrap();
                let bar = bar.get_or_insert_with(|| {
                    let b = indicatif::ProgressBar::new(*total);
                    b.set_style(
                        indicatif::ProgressStyle::with_template(
                            "  uploading {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} {eta}",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                    );
                    b
                });
                bar.set_length(*total);
                bar.set_position(*sent);
            }
            Event::PhaseFinished(p) => {
                self.clear_bar();
                println!("{}", phase_line(p))
            }
            Event::HostPhaseFinished(host, p) => {
                self.clear_bar();
                let line = phase_line(p);
                let (first, rest) = line.split_once('\n').unwrap_or((&line, ""));
                println!("{first}  {DIM}[{host}]{DIM:#}");
                if !rest.is_empty() {
                    println!("{rest}");
                }
            }
            Event::Note(text) => {
                for line in printable(text).lines() {
                    println!("    {DIM}{line}{DIM:#}");
                }
            }
            Event::JobFinished(job) => println!("{}", summary(job)),
        }
    }
}

/// The closing line of a job.
pub fn summary(job: &Job) -> String {
    let what = job.kind.as_str();
    let took = job
        .duration_seconds()
        .map(|s| format!(", {s:.1} s"))
        .unwrap_or_default();
    if let Some(kind) = job.state.failure() {
        let mut s = format!(
            "{RED}✗{RED:#} {BOLD}{}{BOLD:#} {what} failed ({}) (job {}{took})",
            job.service_name,
            kind.as_str(),
            job.deploy_job_id
        );
        if let Some(rb) = job.state.rollback() {
            s.push_str(&format!("\n  {}", printable(&rb.details)));
        }
        s
    } else {
        format!(
            "{GREEN}✓{GREEN:#} {BOLD}{}{BOLD:#} {what} succeeded: release {} is current at {} (job {}{took})",
            job.service_name,
            job.release.as_deref().unwrap_or("?"),
            job.service_url.as_deref().unwrap_or("?"),
            job.deploy_job_id
        )
    }
}

/// A job in full, as `deployer status` shows it.
pub fn print_job(job: &Job) {
    println!(
        "{BOLD}{}{BOLD:#} {} of {} ({}), started {} by {}",
        job.deploy_job_id,
        job.kind.as_str(),
        job.service_name,
        job.deployment_method,
        job.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
        job.actor
    );
    println!("  status: {}", job.state.status().as_str());
    for p in &job.phases {
        println!("{}", phase_line(&p.view()));
    }
    for h in &job.hosts {
        println!(
            "  {BOLD}{}{BOLD:#} (wave {}): {}",
            h.host,
            h.wave + 1,
            h.state.status().as_str()
        );
        for p in &h.phases {
            for line in phase_line(&p.view()).lines() {
                println!("  {line}");
            }
        }
        if let Some(rb) = h.reverted.as_ref().or(h.state.rollback()) {
            println!("      {}", printable(&rb.details));
        }
    }
    if let Some(reg) = &job.registration {
        println!(
            "  registered: droplet #{} at {}",
            reg.droplet_id, reg.endpoint
        );
    }
    println!("{}", summary(job));
}

/// Prints rows as aligned columns under a header.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!(
        "{BOLD}{}{BOLD:#}",
        line(header.iter().map(|h| h.to_string()).collect())
    );
    for row in &rows {
        println!("{}", line(row.clone()));
    }
}

/// Prints a value as pretty JSON.
pub fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// The monitor's lines, as `deployer monitor` prints them and its `--watch`
/// view shows them.
pub mod monitor {
    use crate::engine::{HostLine, ServiceLine, Snapshot};
    use crate::hosting::host::human_bytes;

    pub const SERVICE_HEADER: [&str; 7] =
        ["", "SERVICE", "HOST", "PORT", "HEALTH", "RELEASE", "SINCE"];
    pub const HOST_HEADER: [&str; 4] = ["HOST", "CPU", "MEMORY", "DISK"];

    pub fn registry_text(s: &Snapshot) -> String {
        let r = &s.registry;
        let here = format!("{} registered here", r.registered);
        match (&r.url, r.reachable) {
            (Some(url), Some(true)) => format!(
                "Registry: ✓ {url} answered in {} ms ({here})",
                r.ms.unwrap_or(0)
            ),
            (Some(url), _) => format!("Registry: ✗ {url} does not answer ({here})"),
            (None, _) => format!("Registry: none configured (registry_url) ({here})"),
        }
    }

    pub fn service_row(l: &ServiceLine) -> Vec<String> {
        let c = &l.check;
        vec![
            if c.healthy { "✓" } else { "✗" }.to_string(),
            l.service.clone(),
            c.host.clone(),
            l.port.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            match (c.ms, &c.replicas) {
                (Some(ms), Some(r)) if c.healthy => format!("{ms} ms, {r} tasks"),
                (Some(ms), None) if c.healthy => format!("{ms} ms"),
                (_, Some(r)) => format!("{}, {r} tasks", c.details),
                _ => c.details.clone(),
            },
            c.release.clone().unwrap_or_else(|| "-".into()),
            l.since.map(since).unwrap_or_else(|| "-".into()),
        ]
    }

    pub fn host_row(h: &HostLine) -> Vec<String> {
        if let Some(e) = &h.error {
            return vec![
                h.host.clone(),
                format!("✗ {}", first_line(e)),
                "".into(),
                "".into(),
            ];
        }
        let pair = |used: Option<u64>, total: Option<u64>| match (used, total) {
            (Some(u), Some(t)) if t > 0 => format!(
                "{} / {} ({:.0}%)",
                human_bytes(u),
                human_bytes(t),
                100.0 * u as f64 / t as f64
            ),
            _ => "-".into(),
        };
        vec![
            h.host.clone(),
            h.cpu_percent
                .map(|c| format!("{c:.0}%"))
                .unwrap_or_else(|| "-".into()),
            pair(h.memory_used_bytes, h.memory_total_bytes),
            pair(h.disk_used_bytes, h.disk_total_bytes),
        ]
    }

    pub fn summary(s: &Snapshot) -> String {
        let healthy = s.services.iter().filter(|l| l.check.healthy).count();
        let down = s.hosts.iter().filter(|h| h.error.is_some()).count();
        let mut text = format!("{healthy} of {} services healthy", s.services.len());
        if down > 0 {
            text.push_str(&format!("; {down} hosts unreachable"));
        }
        text
    }

    fn first_line(s: &str) -> &str {
        s.lines().next().unwrap_or("")
    }

    /// A time and how long ago it was.
    fn since(t: chrono::DateTime<chrono::Utc>) -> String {
        let ago = (chrono::Utc::now() - t).num_seconds().max(0);
        let ago = match ago {
            s if s < 60 => format!("{s} s"),
            s if s < 3600 => format!("{} min", s / 60),
            s if s < 86_400 => format!("{} h", s / 3600),
            s => format!("{} d", s / 86_400),
        };
        format!("{} ({ago} ago)", t.format("%Y-%m-%d %H:%M"))
    }
}
