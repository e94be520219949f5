//! [`Secret`]: a value that must not reach a log. Its own module, below both
//! [`crate::config`] (which reads secrets) and [`crate::secrets`] (which resolves
//! them, from the config), so neither imports the other for it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A value that must not reach a log: a key, a token, or a URL that may carry a
/// password. Its `Debug` form is `Secret([redacted])`, so a [`crate::Config`] or
/// [`crate::secrets::Secrets`] formatted with `{:?}` (a panic message, a `dbg!`, a tracing field)
/// shows none of them; the value is read with [`Secret::expose`], where it is used.
///
/// Its own type rather than `secrecy::SecretString`, which cannot be serialized
/// (`secrets.json`) or compared (the tests), both of which Herald needs; the
/// comparisons that guard access do not use `==` but compare the exposed bytes in
/// constant time (`auth.rs`).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The value itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty (an unset environment variable given as `X=`).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}
