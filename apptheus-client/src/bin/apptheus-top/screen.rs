//! The live view: the table, refreshed every interval, sorted by the key pressed, until `q`.
//!
//! The terminal is put back (raw mode off, the main screen again, the cursor shown) however
//! the view ends: `q`, Ctrl-C, an error (`Screen` is dropped on the way out), a panic
//! (ratatui's hook), SIGTERM or SIGHUP (checked between frames).
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::Duration,
};

use apptheus_api::{Containers, State};
use ratatui::{
    DefaultTerminal, Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Modifier, Style, Stylize as _},
    text::Line,
    widgets::{Cell, Row, Table},
};

use crate::{
    source::Source,
    table::{self, HEADERS, NUMERIC, Sort},
};

/// How long a wait for a key lasts before the screen is looked at again (a new answer, a
/// signal).
const TICK: Duration = Duration::from_millis(100);

/// The terminal in raw mode on the alternate screen, put back when dropped.
struct Screen {
    terminal: DefaultTerminal,
}

impl Screen {
    fn enter() -> std::io::Result<Screen> {
        match ratatui::try_init() {
            Ok(terminal) => Ok(Screen { terminal }),
            Err(e) => {
                // Raw mode may be on already.
                ratatui::restore();
                Err(e)
            }
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = self.terminal.show_cursor();
        ratatui::restore();
    }
}

/// What the view shows.
struct View {
    address: String,
    sort: Sort,
    last: Containers,
    error: Option<String>,
}

/// Run the live view until the user quits; `first` is the answer already read.
pub fn run(
    client: Source,
    first: Containers,
    sort: Sort,
    interval: Duration,
) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    let mut view = View {
        address: client.describe(),
        sort,
        last: first,
        error: None,
    };
    let answers = fetch_every(client, interval);
    let mut screen = Screen::enter()?;
    while !stop.load(Ordering::Relaxed) {
        screen.terminal.draw(|f| draw(f, &view))?;
        if event::poll(TICK)?
            && let Event::Key(k) = event::read()?
            && k.kind == KeyEventKind::Press
        {
            match k.code {
                KeyCode::Char('q') | KeyCode::Esc => break,
                KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => break,
                KeyCode::Char(c) => view.sort = Sort::from_key(c).unwrap_or(view.sort),
                _ => {}
            }
        }
        while let Ok(answer) = answers.try_recv() {
            match answer {
                Ok(c) => {
                    view.last = c;
                    view.error = None;
                }
                Err(e) => view.error = Some(e.to_string()),
            }
        }
    }
    Ok(())
}

/// Ask the daemon every `interval` on a thread of its own (a slow answer does not hold up the
/// keys); the answers come through the channel. The thread ends with the program.
fn fetch_every(client: Source, interval: Duration) -> mpsc::Receiver<anyhow::Result<Containers>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(interval);
            if tx.send(client.fetch()).is_err() {
                return;
            }
        }
    });
    rx
}

fn draw(f: &mut Frame<'_>, view: &View) {
    let [top, body, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let c = &view.last;
    let live = c
        .containers
        .iter()
        .filter(|c| c.state == State::Live)
        .count();
    let updated = apptheus_api::time::from_unix_seconds(c.time)
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default();
    let title = format!(
        "apptheus-top  {}  {} live, {} ended  {}",
        table::word(&c.host),
        live,
        c.containers.len() - live,
        updated,
    );
    f.render_widget(Line::from(title).bold(), top);

    let mut containers = c.containers.clone();
    table::sort(&mut containers, view.sort);
    let rows: Vec<[String; 12]> = containers
        .iter()
        .map(|row| table::cells(row, c.time))
        .collect();
    let mut widths = HEADERS.map(|h| h.len() as u16);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count() as u16);
        }
    }
    let align = |i: usize, text: String| {
        let line = Line::from(text);
        if NUMERIC[i] {
            line.right_aligned()
        } else {
            line
        }
    };
    let header = Row::new(HEADERS.iter().enumerate().map(|(i, h)| {
        let style = if i == view.sort.column() {
            Style::new().add_modifier(Modifier::REVERSED)
        } else {
            Style::new()
        };
        Cell::from(align(i, h.to_string())).style(style)
    }))
    .bold();
    let body_rows = rows.into_iter().map(|cells| {
        Row::new(
            cells
                .into_iter()
                .enumerate()
                .map(|(i, s)| Cell::from(align(i, s))),
        )
    });
    let table = Table::new(body_rows, widths.map(Constraint::Length))
        .header(header)
        .column_spacing(2);
    f.render_widget(table, body);

    let status = match &view.error {
        Some(e) => Line::from(format!("{e}  (retrying; q quit)")).red(),
        None => Line::from(format!(
            "sort: c cpu  m memory  n name  u user  |  q quit  |  {}",
            view.address
        )),
    };
    f.render_widget(status, bottom);
}
