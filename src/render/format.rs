//! Formatting shared by what deployer prints and what it sends: a phase
//! as one line, durations, and outside text made safe for a terminal.

use crate::model::PhaseView;
use anstyle::{AnsiColor, Style};

pub const GREEN: Style = AnsiColor::Green.on_default();
pub const RED: Style = AnsiColor::Red.on_default();
pub const DIM: Style = Style::new().dimmed();
pub const BOLD: Style = Style::new().bold();

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
