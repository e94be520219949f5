//! Durations on the wire: a JSON number of seconds, fractions allowed.
//!
//! An operator writes `{"window_s": 2.5}` as readily as `{"window_s": 30}`, and a
//! tool that computes the window gets a float; both mean a duration. What is not a
//! duration (a negative number, a string, a value too large to be a deliberate
//! choice) is refused where it is read, with the range in the message, so every
//! body that asks for seconds reads them the same way.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Unexpected, Visitor};
use serde::{Serialize, Serializer};

/// A non-negative duration read from a JSON number of seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seconds(Duration);

impl Seconds {
    /// The largest duration any body may ask for: about 136 years. Longer is not a
    /// setting but a mistake (or `1e300`); each field has its own, smaller, limit.
    pub const MAX: u64 = u32::MAX as u64;

    pub const fn from_secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }

    pub const fn duration(self) -> Duration {
        self.0
    }

    /// Reads `s` seconds, refusing what is negative, not finite, or over [`Self::MAX`].
    pub fn from_f64(s: f64) -> Option<Self> {
        if !(0.0..=Self::MAX as f64).contains(&s) {
            return None;
        }
        Duration::try_from_secs_f64(s).ok().map(Self)
    }
}

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} s", self.0.as_secs_f64())
    }
}

/// A whole number of seconds as an integer (`30`), anything else as a float (`2.5`).
impl Serialize for Seconds {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.subsec_nanos() == 0 {
            s.serialize_u64(self.0.as_secs())
        } else {
            s.serialize_f64(self.0.as_secs_f64())
        }
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a number of seconds from 0 to {}", Seconds::MAX)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Seconds, E> {
                if v > Seconds::MAX {
                    return Err(E::invalid_value(Unexpected::Unsigned(v), &self));
                }
                Ok(Seconds::from_secs(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Seconds, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Seconds, E> {
                Seconds::from_f64(v).ok_or_else(|| E::invalid_value(Unexpected::Float(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Duration, String> {
        serde_json::from_str::<Seconds>(text)
            .map(Seconds::duration)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn integers_and_fractions_are_durations() {
        assert_eq!(read("0"), Ok(Duration::ZERO));
        assert_eq!(read("30"), Ok(Duration::from_secs(30)));
        assert_eq!(read("5.0"), Ok(Duration::from_secs(5)));
        assert_eq!(read("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(read("1e3"), Ok(Duration::from_secs(1000)));
        assert_eq!(read("-0.0"), Ok(Duration::ZERO));
        assert_eq!(read("4294967295"), Ok(Duration::from_secs(Seconds::MAX)));
    }

    #[test]
    fn what_is_not_a_duration_is_refused_with_the_range() {
        for bad in [
            "-1",
            "-0.5",
            "4294967296",
            "1e300",
            "18446744073709551615",
            "\"5\"",
            "null",
            "true",
            "[5]",
        ] {
            let e = read(bad).unwrap_err();
            assert!(
                e.contains("expected a number of seconds from 0 to"),
                "{bad}: {e}"
            );
        }
        // serde_json itself refuses what no f64 holds (JSON has no NaN or infinity).
        for bad in ["1e400", "NaN", "Infinity"] {
            assert!(read(bad).is_err(), "{bad}");
        }
        assert_eq!(Seconds::from_f64(f64::NAN), None);
        assert_eq!(Seconds::from_f64(f64::INFINITY), None);
    }

    #[test]
    fn whole_seconds_write_as_integers() {
        let s =
            |t: &str| serde_json::to_string(&serde_json::from_str::<Seconds>(t).unwrap()).unwrap();
        assert_eq!(s("5.0"), "5");
        assert_eq!(s("2.5"), "2.5");
    }
}
