//! Key predicates: which key means what, in one place, so the help screen, the app
//! and the tests agree. Pure functions of a [`KeyEvent`].

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

fn is_char(k: &KeyEvent, c: char) -> bool {
    k.code == KeyCode::Char(c)
        && !k
            .modifiers
            .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT)
}

/// Key releases and repeats (reported on some terminals) are not presses.
pub fn should_ignore(k: &KeyEvent) -> bool {
    k.kind != KeyEventKind::Press
}

pub fn is_quit(k: &KeyEvent) -> bool {
    is_char(k, 'q') || (k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL))
}
pub fn is_help(k: &KeyEvent) -> bool {
    is_char(k, '?')
}
pub fn is_back(k: &KeyEvent) -> bool {
    k.code == KeyCode::Esc
}
pub fn is_enter(k: &KeyEvent) -> bool {
    k.code == KeyCode::Enter
}
pub fn is_up(k: &KeyEvent) -> bool {
    k.code == KeyCode::Up || is_char(k, 'k')
}
pub fn is_down(k: &KeyEvent) -> bool {
    k.code == KeyCode::Down || is_char(k, 'j')
}
pub fn is_sort(k: &KeyEvent) -> bool {
    is_char(k, 's')
}
pub fn is_filter(k: &KeyEvent) -> bool {
    is_char(k, '/')
}
pub fn is_drain(k: &KeyEvent) -> bool {
    is_char(k, 'd')
}
pub fn is_undrain(k: &KeyEvent) -> bool {
    is_char(k, 'u')
}
pub fn is_apply_tuning(k: &KeyEvent) -> bool {
    is_char(k, 't')
}
pub fn is_yes(k: &KeyEvent) -> bool {
    is_char(k, 'y') || is_char(k, 'Y')
}
pub fn is_no(k: &KeyEvent) -> bool {
    is_char(k, 'n') || is_char(k, 'N') || is_back(k)
}
pub fn is_backspace(k: &KeyEvent) -> bool {
    k.code == KeyCode::Backspace
}
/// A typed character for a text prompt (filter, drain window).
pub fn typed(k: &KeyEvent) -> Option<char> {
    match k.code {
        KeyCode::Char(c)
            if !k
                .modifiers
                .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT) =>
        {
            Some(c)
        }
        _ => None,
    }
}

/// Help text: (keys, what), shown by `?`.
pub const HELP: &[(&str, &str)] = &[
    ("j/k ↑/↓", "select node"),
    ("Enter", "node detail (tuning, drain progress)"),
    ("Esc", "back / cancel"),
    ("s", "sort by next column"),
    ("/", "filter nodes (id, state, version)"),
    ("d", "drain selected node (asks window, then y/n)"),
    ("u", "undrain selected node (y/n)"),
    ("t", "apply tuning on selected node (y/n)"),
    ("?", "this help"),
    ("q", "quit"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crossterm::event::KeyEventState;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    /// q and Ctrl-C quit; a plain c or Alt-q does not.
    #[test]
    fn quit_keys() {
        assert!(is_quit(&key(KeyCode::Char('q'))));
        assert!(is_quit(&KeyEvent::new(
            KeyCode::Char('c'),
            KeyModifiers::CONTROL
        )));
        assert!(!is_quit(&key(KeyCode::Char('c'))));
        assert!(!is_quit(&KeyEvent::new(
            KeyCode::Char('q'),
            KeyModifiers::ALT
        )));
    }

    /// Arrows and vi keys move; y/n confirm; Esc counts as no.
    #[test]
    fn moves_and_confirms() {
        assert!(is_up(&key(KeyCode::Up)) && is_up(&key(KeyCode::Char('k'))));
        assert!(is_down(&key(KeyCode::Down)) && is_down(&key(KeyCode::Char('j'))));
        assert!(is_yes(&key(KeyCode::Char('y'))) && !is_yes(&key(KeyCode::Char('n'))));
        assert!(is_no(&key(KeyCode::Esc)) && is_no(&key(KeyCode::Char('n'))));
        assert_eq!(typed(&key(KeyCode::Char('3'))), Some('3'));
        assert_eq!(typed(&key(KeyCode::Enter)), None);
    }

    /// Key releases are ignored, presses are not.
    #[test]
    fn releases_ignored() {
        let mut k = key(KeyCode::Char('q'));
        assert!(!should_ignore(&k));
        k.kind = KeyEventKind::Release;
        k.state = KeyEventState::NONE;
        assert!(should_ignore(&k));
    }
}
