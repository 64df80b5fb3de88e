//! Rendering for people: one line per phase with ✓/✗ and its duration,
//! notes as they happen, then a summary. Colour follows NO_COLOR and whether
//! stdout is a terminal (anstream decides); `--json` prints the job instead.

use crate::engine::{Event, Sink};
use crate::model::{Job, PhaseView};
use anstream::println;
use anstyle::{AnsiColor, Style};

const GREEN: Style = AnsiColor::Green.on_default();
const RED: Style = AnsiColor::Red.on_default();
const DIM: Style = Style::new().dimmed();
const BOLD: Style = Style::new().bold();

/// Text from outside (a request, a service's log, a host's answer) made
/// safe for a terminal: control characters, escape sequences among them,
/// are shown as `\x1b` instead of acted on. Newlines and tabs stay.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

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

/// Prints nothing as a job runs (`--json` prints the finished job).
pub struct Quiet;

impl Sink for Quiet {
    fn event(&self, _: &Event) {}
}

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

/// `  ✓ Build           412 ms  ran `…``, with the error below a failed phase.
pub fn phase_line(p: &PhaseView) -> String {
    let details = printable(&p.details);
    let error = p.error.as_deref().map(printable);
    let (mark, style) = match p.status.as_str() {
        "success" => ("✓", GREEN),
        "failed" => ("✗", RED),
        "skipped" => ("-", DIM),
        "running" => ("…", BOLD),
        _ => (" ", DIM),
    };
    let duration = p.duration_ms.map(format_ms).unwrap_or_default();
    let mut line = format!(
        "  {style}{mark}{style:#} {:<14} {:>8}  {}",
        p.phase.as_str(),
        duration,
        match (p.status.as_str(), &error) {
            ("skipped", _) => format!("{DIM}skipped: {details}{DIM:#}"),
            (_, Some(err)) => format!("{RED}{}{RED:#}", err.lines().next().unwrap_or("")),
            _ => details,
        }
    );
    if let Some(err) = &error {
        for l in err.lines().skip(1) {
            line.push_str(&format!("\n      {l}"));
        }
    }
    line
}

pub fn format_ms(ms: i64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
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
