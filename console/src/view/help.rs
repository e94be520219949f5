//! The `?` popup: every key, from [`crate::input::HELP`].

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};

use super::styles;

pub fn draw(f: &mut Frame, area: Rect) {
    let lines: Vec<Line> = crate::input::HELP
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!(" {k:<10}"), styles::title()),
                Span::raw(*what),
            ])
        })
        .collect();
    f.render_widget(Clear, area);
    f.render_widget(
        Paragraph::new(lines).block(
            Block::bordered().title(Span::styled(" help (? or Esc closes) ", styles::title())),
        ),
        area,
    );
}
