//! The fleet screen: one row per node, cluster totals, sparklines of total
//! connections and p99 over the last minutes, and the Redis panel.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Sparkline, Table, TableState};

use super::{fmt, styles};
use crate::app::App;
use crate::state::{Health, NodeState};

const HEADER: [&str; 11] = [
    "NODE",
    "STATE",
    "VERSION",
    "CONNS/CAP",
    "DELIV/S",
    "P50",
    "P99",
    "QUEUE/CAP",
    "SLOW",
    "FD",
    "TUNING",
];
/// Fits 120 columns with the borders.
const WIDTHS: [u16; 11] = [20, 13, 8, 12, 7, 7, 7, 10, 5, 10, 8];

/// The cells of one node's row, as text (shared with `status`).
pub fn cells(n: &NodeState) -> [String; 11] {
    let h = n.health();
    let id = n.id().to_owned();
    let state = h.label().to_owned();
    let tuning = fmt::tuning(n.tuning_short());
    match n.last().filter(|_| h != Health::Unreachable) {
        None => {
            let d = || "-".to_owned();
            [id, state, d(), d(), d(), d(), d(), d(), d(), d(), tuning]
        }
        Some(s) => [
            id,
            state,
            s.status.version.clone(),
            format!("{}/{}", s.status.connections, s.status.capacity),
            fmt::rate(n.delivered_per_s()),
            fmt::latency(n.latency(0.5)),
            fmt::latency(n.latency(0.99)),
            format!("{}/{}", s.metrics.queue_depth, s.metrics.queue_capacity),
            format!("{}", s.metrics.slow_closes),
            format!("{}/{}", s.status.fd_open, s.status.fd_limit),
            tuning,
        ],
    }
}

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let redis = app.fleet.redis.is_some();
    let [table, totals, bottom] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(6),
    ])
    .areas(area);
    let rows: Vec<Row> = app
        .rows()
        .into_iter()
        .map(|n| {
            let h = n.health();
            let mut c: Vec<Cell> = Vec::with_capacity(11);
            for (i, mut text) in cells(n).into_iter().enumerate() {
                if i == 1 {
                    text = format!("{} {text}", styles::symbol(h));
                }
                let style = match i {
                    1 => styles::health(h),
                    10 if n.tuning_short().is_some_and(|s| s > 0) => styles::bad(),
                    _ => Default::default(),
                };
                c.push(Cell::from(Span::styled(text, style)));
            }
            Row::new(c)
        })
        .collect();
    let header = Row::new(HEADER.iter().map(|h| Cell::from(*h))).style(styles::header());
    let mut state =
        TableState::default().with_selected(Some(app.selected.min(rows.len().saturating_sub(1))));
    let widths = WIDTHS.map(Constraint::Length);
    f.render_stateful_widget(
        Table::new(rows, widths)
            .header(header)
            .row_highlight_style(styles::selected())
            .block(Block::bordered().title(Span::styled(" fleet ", styles::title()))),
        table,
        &mut state,
    );
    let t = app.fleet.totals();
    f.render_widget(
        Line::from(vec![
            Span::styled(" TOTAL ", styles::title()),
            Span::raw(format!(
                " {}/{} nodes  conns {}/{}  deliv/s {}  p50 {}  p99 {}  queued {}  slow closes {}",
                t.reachable,
                t.nodes,
                t.connections,
                t.capacity,
                fmt::rate(Some(t.delivered_per_s)),
                fmt::latency(t.p50),
                fmt::latency(t.p99),
                t.queue_depth,
                t.slow_closes
            )),
        ]),
        totals,
    );
    let (charts, panel) = if redis {
        let [a, b] =
            Layout::horizontal([Constraint::Min(20), Constraint::Length(34)]).areas(bottom);
        (a, Some(b))
    } else {
        (bottom, None)
    };
    let [conns, p99] = Layout::horizontal([Constraint::Fill(1), Constraint::Fill(1)]).areas(charts);
    let width = conns.width.saturating_sub(2) as usize;
    let hist = &app.fleet.totals;
    let skip = hist.len().saturating_sub(width);
    let c: Vec<u64> = hist.iter().skip(skip).map(|p| p.connections).collect();
    let p: Vec<u64> = hist.iter().skip(skip).map(|p| p.p99_us).collect();
    let now = hist.back().copied().unwrap_or_default();
    f.render_widget(
        Sparkline::default()
            .data(&c)
            .block(Block::bordered().title(format!(" connections {} ", now.connections))),
        conns,
    );
    f.render_widget(
        Sparkline::default()
            .data(&p)
            .block(Block::bordered().title(format!(" p99 {} ", fmt::latency(t.p99)))),
        p99,
    );
    if let Some(area) = panel {
        let lines = match app.fleet.redis.as_ref() {
            Some(Ok(i)) => vec![
                Line::raw(format!(" memory   {}", i.get("used_memory_human"))),
                Line::raw(format!(" clients  {}", i.get("connected_clients"))),
                Line::raw(format!(" pub/sub  {} channels", i.get("pubsub_channels"))),
                Line::raw(format!(" ops/s    {}", i.get("instantaneous_ops_per_sec"))),
            ],
            Some(Err(e)) => vec![Line::styled(format!(" ✗ {e}"), styles::bad())],
            None => vec![],
        };
        f.render_widget(
            Paragraph::new(lines)
                .block(Block::bordered().title(Span::styled(" redis ", styles::title()))),
            area,
        );
    }
}
