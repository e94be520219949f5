//! Draws an [`App`]: header, the current screen (fleet or node detail), the action
//! log, the key bar or prompt, and popups (help, confirmation). Reads the model
//! only; no I/O, no state changes.

pub mod detail;
pub mod fleet;
pub mod fmt;
pub mod help;
pub mod styles;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Wrap};

use crate::app::{App, Mode, Screen};

pub fn draw(f: &mut Frame, app: &App) {
    let [head, body, log, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(5),
        Constraint::Length(4),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let t = app.fleet.totals();
    f.render_widget(
        Line::from(vec![
            Span::styled(" herald-console ", styles::selected()),
            Span::raw(format!(
                "  {} nodes ({} reachable)  every {:?}  from {}  sort: {}{}",
                t.nodes,
                t.reachable,
                app.interval,
                app.source,
                app.sort.label(),
                if app.filter.is_empty() {
                    String::new()
                } else {
                    format!("  filter: {}", app.filter)
                },
            )),
        ]),
        head,
    );
    match app.screen {
        Screen::Fleet => fleet::draw(f, body, app),
        Screen::Detail => detail::draw(f, body, app),
    }
    // Newest first.
    let lines: Vec<Line> = app
        .log
        .iter()
        .rev()
        .take(2)
        .map(|l| Line::raw(l.as_str()))
        .collect();
    f.render_widget(
        Paragraph::new(lines)
            .block(Block::bordered().title(Span::styled(" actions ", styles::title()))),
        log,
    );
    f.render_widget(footer(app), foot);
    if let Mode::Confirm { admin, action } = &app.mode {
        let id = app
            .fleet
            .nodes
            .get(admin)
            .map_or(admin.as_str(), |n| n.id());
        let area = popup(f.area(), 50, 5);
        f.render_widget(Clear, area);
        f.render_widget(
            Paragraph::new(format!("{} node {id}?\n\n[y] yes   [n] no", action.verb()))
                .wrap(Wrap { trim: false })
                .block(Block::bordered().title(Span::styled(" confirm ", styles::title()))),
            area,
        );
    }
    if app.help {
        help::draw(f, popup(f.area(), 60, crate::input::HELP.len() as u16 + 4));
    }
}

fn footer(app: &App) -> Line<'static> {
    match &app.mode {
        Mode::Normal => Line::styled(
            " ? help  q quit  ↑↓ select  Enter detail  s sort  / filter  d drain  u undrain  t tuning",
            styles::dim(),
        ),
        Mode::Filter => Line::raw(format!(" filter: {}▏ (Enter keep, Esc clear)", app.filter)),
        Mode::DrainWindow { input, .. } => Line::raw(format!(
            " drain window (s): {input}▏ (Enter next, Esc cancel)"
        )),
        Mode::Confirm { .. } => Line::raw(" y confirm, n cancel"),
    }
}

/// A `w`×`h` rectangle centred in `r` (clipped to it).
pub fn popup(r: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(r.width);
    let h = h.min(r.height);
    Rect::new(r.x + (r.width - w) / 2, r.y + (r.height - h) / 2, w, h)
}
