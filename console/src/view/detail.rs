//! The node detail screen: all of a node's figures, drain progress, and its tuning
//! items (want / have / ok).

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Gauge, Paragraph, Row, Table, Wrap};

use super::{fmt, styles};
use crate::app::App;

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let Some(n) = app.selected_node() else {
        f.render_widget(Paragraph::new(" no node selected (Esc: back)"), area);
        return;
    };
    let h = n.health();
    let [top, gauge, rest] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(3),
        Constraint::Min(3),
    ])
    .areas(area);
    f.render_widget(
        Line::from(vec![
            Span::styled(
                format!(" {} {} ", styles::symbol(h), n.id()),
                styles::title(),
            ),
            Span::styled(h.label(), styles::health(h)),
            Span::raw(format!("  admin {}  (Esc: back)", n.target.admin)),
        ]),
        top,
    );
    match n.drain_progress() {
        Some((done, of)) => {
            let ratio = if of == 0 {
                1.0
            } else {
                done as f64 / of as f64
            };
            let left = of - done;
            f.render_widget(
                Gauge::default()
                    .ratio(ratio.clamp(0.0, 1.0))
                    .label(format!("drain: {done}/{of} closed, {left} left"))
                    .block(Block::bordered().title(" drain ")),
                gauge,
            );
        }
        None => f.render_widget(
            Paragraph::new(match h {
                crate::state::Health::Drained => " drained: no connections left (u: undrain)",
                _ => " not draining (d: drain)",
            })
            .block(Block::bordered().title(" drain ")),
            gauge,
        ),
    }
    let [figs, tuning] =
        Layout::horizontal([Constraint::Length(44), Constraint::Min(20)]).areas(rest);
    let mut lines = Vec::new();
    if let Some(e) = &n.down {
        lines.push(Line::styled(format!(" ✗ unreachable: {e}"), styles::bad()));
    }
    if let Some(s) = n.last() {
        let st = &s.status;
        let m = &s.metrics;
        for (k, v) in [
            ("version", st.version.clone()),
            ("uptime", fmt::uptime(st.uptime_s)),
            (
                "connections",
                format!("{} / {}", st.connections, st.capacity),
            ),
            ("delivered/s", fmt::rate(n.delivered_per_s())),
            ("delivered total", format!("{}", m.delivered)),
            ("latency p50", fmt::latency(n.latency(0.5))),
            ("latency p99", fmt::latency(n.latency(0.99))),
            ("queue", format!("{} / {}", m.queue_depth, m.queue_capacity)),
            ("slow-consumer closes", format!("{}", m.slow_closes)),
            ("fd", format!("{} / {}", st.fd_open, st.fd_limit)),
            ("redis", st.redis.to_string()),
            ("store", st.store.to_string()),
        ] {
            lines.push(Line::from(vec![
                Span::styled(format!(" {k:<21}"), styles::title()),
                Span::raw(v),
            ]));
        }
    }
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(" figures ")),
        figs,
    );
    let block = Block::bordered().title(Span::styled(
        format!(" tuning {} (t: apply) ", fmt::tuning(n.tuning_short())),
        styles::title(),
    ));
    match &n.tuning {
        Some(Ok(r)) => {
            let rows = r.items.iter().map(|i| {
                let ok = if i.ok { "✓ ok" } else { "✗ SHORT" };
                let style = if i.ok {
                    Default::default()
                } else {
                    styles::bad()
                };
                Row::new(vec![
                    Cell::from(i.key.clone()),
                    Cell::from(format!("{} {}", i.op, i.want)),
                    Cell::from(i.have.clone()),
                    Cell::from(Span::styled(ok, style)),
                ])
            });
            f.render_widget(
                Table::new(
                    rows,
                    [
                        Constraint::Min(24),
                        Constraint::Length(16),
                        Constraint::Length(16),
                        Constraint::Length(8),
                    ],
                )
                .header(Row::new(["KEY", "WANT", "HAVE", "OK"]).style(styles::header()))
                .block(block.title_bottom(format!(" profile {} ", r.profile))),
                tuning,
            );
        }
        Some(Err(e)) => f.render_widget(Paragraph::new(format!(" ✗ {e}")).block(block), tuning),
        None => f.render_widget(Paragraph::new(" loading…").block(block), tuning),
    }
}
