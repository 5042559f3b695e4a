//! `reprise replay --tui`: a full-screen live view of a running replay, drawn on the
//! terminal's stderr (ratatui) from the run's live metrics ([`reprise_replay::live`]), so that
//! stdout keeps the final summary. `q`, Esc or Ctrl-C stops the run as a signal would (partial
//! results kept, the run marked incomplete); at the end the view shows the final figures as
//! the summary prints them until a key is pressed (at most 10 s), then gives the terminal
//! back.

use std::collections::VecDeque;
use std::io::Stderr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use ratatui::crossterm::{cursor, execute};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Axis, Block, Borders, Chart, Dataset, Gauge, GraphType, Paragraph, Row, Table,
};
use reprise_live::{delta, quantile};
use reprise_replay::Progress;
use reprise_replay::live::{Live, Snapshot};

/// How long the final frame stays without a key.
const FINAL_HOLD: Duration = Duration::from_secs(10);

/// The final figures, as the summary prints them.
#[derive(Debug, Clone)]
pub struct Final {
    /// Lines to show.
    pub lines: Vec<String>,
}

/// A running live view.
pub struct Tui {
    thread: std::thread::JoinHandle<Result<()>>,
    finished: Arc<Mutex<Option<Final>>>,
}

/// Whether a live view can be drawn: stderr is a terminal.
pub fn available() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

/// Takes over the terminal and draws until [`Tui::finish`].
pub fn start(
    live: Arc<Live>,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    title: String,
    intended: Option<Duration>,
) -> Result<Tui> {
    enable_raw_mode().context("--tui: cannot set the terminal to raw mode")?;
    let mut err = std::io::stderr();
    execute!(err, EnterAlternateScreen, cursor::Hide).context("--tui: terminal")?;
    let terminal = Terminal::new(CrosstermBackend::new(err)).context("--tui: terminal")?;
    let finished: Arc<Mutex<Option<Final>>> = Arc::default();
    let view = View {
        live,
        progress,
        stop,
        title,
        intended,
        finished: finished.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("reprise-tui".into())
        .spawn(move || {
            let mut guard = Restore(terminal);
            view.run(&mut guard.0)
        })
        .context("--tui: starting the view")?;
    Ok(Tui { thread, finished })
}

impl Tui {
    /// Shows the final figures until a key is pressed (or [`FINAL_HOLD`]), then restores the
    /// terminal.
    pub fn finish(self, figures: Final) -> Result<()> {
        *self.finished.lock().unwrap_or_else(|e| e.into_inner()) = Some(figures);
        match self.thread.join() {
            Ok(r) => r,
            Err(_) => anyhow::bail!("the live view panicked"),
        }
    }
}

/// Gives the terminal back however the view ends.
struct Restore(Terminal<CrosstermBackend<Stderr>>);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = disable_raw_mode();
        let _ = execute!(self.0.backend_mut(), LeaveAlternateScreen, cursor::Show);
    }
}

struct View {
    live: Arc<Live>,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    title: String,
    intended: Option<Duration>,
    finished: Arc<Mutex<Option<Final>>>,
}

/// What the view remembers between frames.
#[derive(Default)]
struct History {
    /// Once a second: (seconds since the start, target rate, achieved rate).
    rates: Vec<(f64, f64, f64)>,
    /// Once a second, the last 11 snapshots (for the last 10 s).
    window: VecDeque<Snapshot>,
    last: Option<Instant>,
}

impl View {
    fn run(&self, terminal: &mut Terminal<CrosstermBackend<Stderr>>) -> Result<()> {
        let started = Instant::now();
        let mut history = History::default();
        let mut stopping = false;
        let mut final_since: Option<Instant> = None;
        loop {
            let snap = self.live.snapshot(&self.progress);
            if history
                .last
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
            {
                history.last = Some(Instant::now());
                history.rates.push((
                    started.elapsed().as_secs_f64(),
                    snap.target_rate,
                    snap.achieved_rate,
                ));
                history.window.push_back(snap.clone());
                if history.window.len() > 11 {
                    history.window.pop_front();
                }
            }
            let fin = self
                .finished
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if fin.is_some() && final_since.is_none() {
                final_since = Some(Instant::now());
            }
            let hold_left = final_since.map(|t| FINAL_HOLD.saturating_sub(t.elapsed()));
            terminal.draw(|f| {
                self.draw(
                    f,
                    &snap,
                    &history,
                    started,
                    stopping,
                    fin.as_ref(),
                    hold_left,
                )
            })?;
            if hold_left == Some(Duration::ZERO) {
                return Ok(());
            }
            if event::poll(Duration::from_millis(250))?
                && let Event::Key(k) = event::read()?
                && k.kind == KeyEventKind::Press
            {
                let quit = matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                    || (k.code == KeyCode::Char('c')
                        && k.modifiers.contains(KeyModifiers::CONTROL));
                if fin.is_some() {
                    return Ok(());
                }
                if quit {
                    stopping = true;
                    self.stop.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "one frame is drawn from all the view holds; a struct of them would only rename them"
    )]
    fn draw(
        &self,
        f: &mut ratatui::Frame,
        snap: &Snapshot,
        history: &History,
        started: Instant,
        stopping: bool,
        fin: Option<&Final>,
        hold_left: Option<Duration>,
    ) {
        let [head, chart, table, bottom, foot] = Layout::vertical([
            Constraint::Length(3),
            Constraint::Min(8),
            Constraint::Length(7),
            Constraint::Length(6),
            Constraint::Length(fin.map_or(0, |f| f.lines.len() as u16 + 3)),
        ])
        .areas(f.area());
        f.render_widget(self.header(snap, started, stopping, fin.is_some()), head);
        draw_rates(f, chart, &history.rates);
        f.render_widget(latency_table(snap, history.window.front()), table);
        let [counts, errors] =
            Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)])
                .areas(bottom);
        self.draw_counts(f, counts, snap, started);
        f.render_widget(errors_list(snap), errors);
        if let Some(fin) = fin {
            let mut lines: Vec<Line> = fin
                .lines
                .iter()
                .map(|l| {
                    Line::from(Span::styled(
                        l.clone(),
                        Style::default().add_modifier(Modifier::BOLD),
                    ))
                })
                .collect();
            lines.push(Line::from(format!(
                "press any key to leave (closing in {} s)",
                hold_left.unwrap_or_default().as_secs()
            )));
            f.render_widget(
                Paragraph::new(lines)
                    .block(Block::default().borders(Borders::ALL).title(" final ")),
                foot,
            );
        }
    }

    fn header(
        &self,
        snap: &Snapshot,
        started: Instant,
        stopping: bool,
        done: bool,
    ) -> Paragraph<'static> {
        let elapsed = started.elapsed().as_secs_f64();
        let of = self
            .intended
            .map_or(String::new(), |d| format!(" of {:.0} s", d.as_secs_f64()));
        let step = match snap.step_value {
            Some(v) => format!(", step {} ({v})", snap.step),
            None => String::new(),
        };
        let state = if done {
            "finished".to_owned()
        } else if stopping {
            "stopping: no new requests, waiting for those in flight".to_owned()
        } else {
            "q: stop".to_owned()
        };
        let phase = if snap.phase.is_empty() {
            "starting"
        } else {
            &snap.phase
        };
        Paragraph::new(Line::from(vec![
            Span::styled(
                self.title.clone(),
                Style::default().add_modifier(Modifier::BOLD),
            ),
            Span::raw(format!(
                "  phase {phase}{step}  elapsed {elapsed:.0} s{of}  [{state}]"
            )),
        ]))
        .block(Block::default().borders(Borders::ALL))
    }

    fn draw_counts(&self, f: &mut ratatui::Frame, area: Rect, snap: &Snapshot, started: Instant) {
        let in_flight = snap.sent.saturating_sub(snap.finished);
        let planned = if snap.planned > 0 {
            format!("/{}", snap.planned)
        } else {
            String::new()
        };
        let text = vec![
            Line::from(format!(
                "requests {}{planned} sent, {} finished, {} failed, in flight {in_flight}",
                snap.sent, snap.finished, snap.failed
            )),
            Line::from(format!(
                "rate {:.1} req/s achieved, {:.1} req/s target; late sends {}",
                snap.achieved_rate, snap.target_rate, snap.late
            )),
        ];
        let [lines, gauge] =
            Layout::vertical([Constraint::Length(4), Constraint::Length(2)]).areas(area);
        f.render_widget(
            Paragraph::new(text).block(Block::default().borders(Borders::ALL).title(" run ")),
            lines,
        );
        let elapsed = started.elapsed();
        let (ratio, label) = match (self.intended, snap.planned) {
            (Some(d), _) if !d.is_zero() => (
                elapsed.as_secs_f64() / d.as_secs_f64(),
                format!("{:.0} s left", d.saturating_sub(elapsed).as_secs_f64()),
            ),
            (_, p) if p > 0 => (
                snap.sent as f64 / p as f64,
                format!("{} of {p} sent", snap.sent),
            ),
            _ => (0.0, String::new()),
        };
        f.render_widget(
            Gauge::default()
                .ratio(ratio.clamp(0.0, 1.0))
                .label(label)
                .gauge_style(Style::default().fg(Color::Cyan)),
            gauge,
        );
    }
}

fn draw_rates(f: &mut ratatui::Frame, area: Rect, rates: &[(f64, f64, f64)]) {
    let target: Vec<(f64, f64)> = rates.iter().map(|(t, r, _)| (*t, *r)).collect();
    let achieved: Vec<(f64, f64)> = rates.iter().map(|(t, _, a)| (*t, *a)).collect();
    let t_max = rates.last().map_or(1.0, |r| r.0).max(1.0);
    let y_max = rates.iter().map(|(_, t, a)| t.max(*a)).fold(1.0, f64::max) * 1.1;
    let chart = Chart::new(vec![
        Dataset::default()
            .name("target")
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::default().fg(Color::DarkGray))
            .data(&target),
        Dataset::default()
            .name("achieved")
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::default().fg(Color::Green))
            .data(&achieved),
    ])
    .block(
        Block::default()
            .borders(Borders::ALL)
            .title(" request rate (req/s) "),
    )
    .x_axis(
        Axis::default()
            .bounds([0.0, t_max])
            .labels(["0 s".to_owned(), format!("{t_max:.0} s")]),
    )
    .y_axis(
        Axis::default()
            .bounds([0.0, y_max])
            .labels(["0".to_owned(), format!("{y_max:.0}")]),
    );
    f.render_widget(chart, area);
}

fn ms(bounds: &[f64], counts: &[u64], q: f64) -> String {
    quantile(bounds, counts, q).map_or("-".into(), |s| format!("{:.1}", s * 1e3))
}

fn latency_table<'a>(snap: &Snapshot, ten_s_ago: Option<&Snapshot>) -> Table<'a> {
    let rows = [
        (
            "TTFT",
            &snap.latency_bounds,
            &snap.ttft,
            ten_s_ago.map(|s| &s.ttft),
        ),
        (
            "ITL",
            &snap.latency_bounds,
            &snap.itl,
            ten_s_ago.map(|s| &s.itl),
        ),
        (
            "E2E",
            &snap.latency_bounds,
            &snap.e2e,
            ten_s_ago.map(|s| &s.e2e),
        ),
        (
            "schedule lag",
            &snap.lag_bounds,
            &snap.lag,
            ten_s_ago.map(|s| &s.lag),
        ),
    ]
    .into_iter()
    .map(|(name, bounds, now, then)| {
        let recent = then.map_or_else(|| now.clone(), |t| delta(now, t));
        Row::new(vec![
            name.to_owned(),
            ms(bounds, &recent, 0.5),
            ms(bounds, &recent, 0.9),
            ms(bounds, &recent, 0.99),
            ms(bounds, now, 0.5),
            ms(bounds, now, 0.9),
            ms(bounds, now, 0.99),
        ])
    });
    Table::new(
        rows,
        [Constraint::Length(14)]
            .into_iter()
            .chain([Constraint::Length(10); 6]),
    )
    .header(
        Row::new([
            "ms", "10s p50", "10s p90", "10s p99", "all p50", "all p90", "all p99",
        ])
        .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(
        Block::default()
            .borders(Borders::ALL)
            .title(" latency (from the live histograms, within 10%) "),
    )
}

fn errors_list(snap: &Snapshot) -> Paragraph<'static> {
    let lines: Vec<Line> = if snap.by_error.is_empty() {
        vec![Line::from("none")]
    } else {
        snap.by_error
            .iter()
            .map(|(class, n)| Line::from(format!("{class}: {n}")))
            .collect()
    };
    Paragraph::new(lines).block(
        Block::default()
            .borders(Borders::ALL)
            .title(" errors by class "),
    )
}
