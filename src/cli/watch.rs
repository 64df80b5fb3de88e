//! `deployer monitor --watch`: the monitor as a terminal view (ratatui).
//! A background task takes a new snapshot every interval; the view shows
//! the latest, marks with `*` (and highlights) each service whose health
//! or release changed since the refresh before, and quits on `q`, Esc or
//! Ctrl-C. NO_COLOR turns colours off; the marks stay.

use crate::engine::{Engine, Snapshot};
use crate::render::output::monitor::{
    HOST_HEADER, SERVICE_HEADER, host_row, registry_text, service_row, summary,
};
use crate::support::error::Failure;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// What the view shows: the latest snapshot and what changed in it.
struct View {
    snapshot: Option<Snapshot>,
    /// (service, host) → (healthy, release) at the refresh before.
    before: BTreeMap<(String, String), (bool, Option<String>)>,
    changed: Vec<(String, String)>,
    /// The latest change, kept until the next one: when, and what.
    last_change: Option<String>,
    refreshes: u64,
    interval: u64,
    color: bool,
}

impl View {
    fn update(&mut self, s: Snapshot) {
        let now: BTreeMap<_, _> = s
            .services
            .iter()
            .map(|l| {
                (
                    (l.service.clone(), l.check.host.clone()),
                    (l.check.healthy, l.check.release.clone()),
                )
            })
            .collect();
        self.changed = if self.refreshes == 0 {
            Vec::new()
        } else {
            now.iter()
                .filter(|(k, v)| self.before.get(*k) != Some(*v))
                .map(|(k, _)| k.clone())
                .collect()
        };
        if !self.changed.is_empty() {
            let what: Vec<String> = self
                .changed
                .iter()
                .map(|k| {
                    let mark = if now[k].0 { "✓" } else { "✗" };
                    format!("{} on {} now {mark}", k.0, k.1)
                })
                .collect();
            self.last_change = Some(format!(
                "last change {}: {}",
                s.at.format("%H:%M:%S"),
                what.join(", ")
            ));
        }
        self.before = now;
        self.snapshot = Some(s);
        self.refreshes += 1;
    }

    fn style(&self, s: Style) -> Style {
        if self.color { s } else { Style::default() }
    }

    fn draw(&self, frame: &mut ratatui::Frame) {
        let [top, services, hosts, bottom] = Layout::vertical([
            Constraint::Length(2),
            Constraint::Min(4),
            Constraint::Length(6),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        let Some(s) = &self.snapshot else {
            frame.render_widget(Paragraph::new("deployer monitor: looking…"), top);
            return;
        };
        let title = format!(
            "deployer monitor, {} (refresh {} every {} s; q quits)",
            s.at.format("%H:%M:%S"),
            self.refreshes,
            self.interval
        );
        let head = Paragraph::new(vec![Line::from(title), Line::from(registry_text(s))]);
        frame.render_widget(head, top);
        let cells: Vec<Vec<String>> = s.services.iter().map(service_row).collect();
        let widths = fit(&SERVICE_HEADER, &cells);
        let rows = s.services.iter().zip(cells).map(|(l, mut cells)| {
            let key = (l.service.clone(), l.check.host.clone());
            let changed = self.changed.contains(&key);
            if changed {
                cells[0] = format!("*{}", cells[0]);
            }
            let colour = if l.check.healthy {
                Color::Green
            } else {
                Color::Red
            };
            let mut style = self.style(Style::default().fg(colour));
            if changed {
                style = style.add_modifier(Modifier::REVERSED | Modifier::BOLD);
            }
            Row::new(cells).style(style)
        });
        let header = Row::new(SERVICE_HEADER).style(Style::default().add_modifier(Modifier::BOLD));
        let table = Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title(" services "));
        frame.render_widget(table, services);
        let cells: Vec<Vec<String>> = s.hosts.iter().map(host_row).collect();
        let widths = fit(&HOST_HEADER, &cells);
        let rows = cells.into_iter().map(Row::new);
        let header = Row::new(HOST_HEADER).style(Style::default().add_modifier(Modifier::BOLD));
        let table = Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title(" hosts "));
        frame.render_widget(table, hosts);
        let last = match &self.last_change {
            Some(c) => format!("; {c}"),
            None => String::new(),
        };
        frame.render_widget(Paragraph::new(format!("{}{last}", summary(s))), bottom);
    }
}

/// Each column as wide as its widest cell (a changed row's mark included).
fn fit(header: &[&str], rows: &[Vec<String>]) -> Vec<Constraint> {
    (0..header.len())
        .map(|i| {
            let widest = rows
                .iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
                .max(header[i].chars().count());
            Constraint::Length(widest as u16 + u16::from(i == 0))
        })
        .collect()
}

pub async fn run(engine: Engine, interval: u64) -> Result<i32, Failure> {
    let engine = Arc::new(engine);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Snapshot, Failure>>(1);
    let looker = engine.clone();
    let task = tokio::spawn(async move {
        loop {
            if tx.send(looker.monitor().await).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(interval)).await;
        }
    });
    let mut terminal =
        ratatui::try_init().map_err(|e| Failure::internal(format!("terminal: {e}")))?;
    let mut view = View {
        snapshot: None,
        before: BTreeMap::new(),
        changed: Vec::new(),
        last_change: None,
        refreshes: 0,
        interval,
        color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
    };
    let result = loop {
        match rx.try_recv() {
            Ok(Ok(s)) => view.update(s),
            Ok(Err(f)) => break Err(f),
            Err(_) => {}
        }
        if let Err(e) = terminal.draw(|f| view.draw(f)) {
            break Err(Failure::internal(format!("terminal: {e}")));
        }
        // Short waits, so a new snapshot shows at once.
        let key = tokio::task::block_in_place(|| {
            if event::poll(Duration::from_millis(100)).unwrap_or(false) {
                event::read().ok()
            } else {
                None
            }
        });
        if let Some(Event::Key(k)) = key {
            let ctrl_c =
                k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
            if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                break Ok(0);
            }
        }
    };
    ratatui::restore();
    task.abort();
    result
}
