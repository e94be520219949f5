//! Styles that still read on a monochrome terminal: meaning is carried by symbols,
//! bold and reverse video; colour only repeats it.

use ratatui::style::{Color, Modifier, Style};

use crate::state::Health;

pub fn header() -> Style {
    Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
}

pub fn selected() -> Style {
    Style::new().add_modifier(Modifier::REVERSED)
}

pub fn title() -> Style {
    Style::new().add_modifier(Modifier::BOLD)
}

pub fn dim() -> Style {
    Style::new().add_modifier(Modifier::DIM)
}

/// A symbol per state, so states differ without colour.
pub fn symbol(h: Health) -> &'static str {
    match h {
        Health::Serving => "●",
        Health::Draining => "◐",
        Health::Drained => "○",
        Health::Unreachable => "✗",
        Health::Pending => "…",
    }
}

pub fn health(h: Health) -> Style {
    match h {
        Health::Serving => Style::new().fg(Color::Green),
        Health::Draining => Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
        Health::Drained => Style::new().fg(Color::Yellow),
        Health::Unreachable => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        Health::Pending => dim(),
    }
}

/// Something falls short (tuning item, failed action): bold, and red where possible.
pub fn bad() -> Style {
    Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
}
