//! How deeply a message or payload may nest.
//!
//! The node keeps backend JSON as raw text, and serde_json checks raw text without
//! a recursion limit, so depth was unbounded: the store's own JSON check then failed
//! (SQLite's `json_valid` past its depth limit: a 500, not a 400), and clients
//! whose parsers stop at a depth (browsers' engines, serde_json's 128) received
//! frames they could not read. [`MAX_DEPTH`] is well inside every such limit, and
//! far beyond what a notification needs.

/// The deepest a message or payload may nest: `[]` and `{}` are depth 1, a scalar 0.
pub const MAX_DEPTH: usize = 64;

/// The nesting depth of `json`, a text already known to be valid JSON.
///
/// A scan of the bytes, not a parse: brackets outside strings open and close
/// levels. Cheap enough to run on every message the node accepts.
pub fn depth(json: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in json.as_bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` arrays inside one another around `inner`.
    pub fn nested(n: usize, inner: &str) -> String {
        format!("{}{inner}{}", "[".repeat(n), "]".repeat(n))
    }

    #[test]
    fn depth_counts_brackets_outside_strings() {
        assert_eq!(depth("1"), 0);
        assert_eq!(depth(r#""[{[""#), 0);
        assert_eq!(depth("[]"), 1);
        assert_eq!(depth(r#"{"a":[1,{"b":"]]]"}],"c":{}}"#), 3);
        assert_eq!(depth(r#"["\"[", ["\\", [[]]]]"#), 4);
        assert_eq!(depth(&nested(MAX_DEPTH, "1")), MAX_DEPTH);
        assert_eq!(depth(&nested(10_000, "")), 10_000);
        assert_eq!(depth("[[],[[]],[]]"), 3);
    }
}
