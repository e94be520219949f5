//! User ids and group names: the only two kinds of names a client can route by.
//!
//! Both are validated once, at the edge (token, API path, client frame), and carried
//! as these newtypes afterwards so that no inner module re-checks or forgets to check.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest user id (contract §1).
pub const USER_ID_MAX: usize = 64;
/// Longest group name (contract §1).
pub const GROUP_NAME_MAX: usize = 100;
/// Every user is a member of `user_<id>`.
pub const USER_GROUP_PREFIX: &str = "user_";

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdError {
    Empty,
    TooLong { max: usize },
    BadChar(char),
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdError::Empty => write!(f, "must not be empty"),
            IdError::TooLong { max } => write!(f, "longer than {max} characters"),
            IdError::BadChar(c) => write!(f, "character {c:?} not allowed (use A-Z a-z 0-9 _ . -)"),
        }
    }
}

impl std::error::Error for IdError {}

fn check(s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > max {
        return Err(IdError::TooLong { max });
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        Some(c) => Err(IdError::BadChar(c)),
        None => Ok(()),
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates `s` against the contract's character set and length.
            pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check(&s, $max)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A user id: 1 to 64 characters of `[A-Za-z0-9_.-]`.
    UserId,
    USER_ID_MAX
);
name_type!(
    /// A group name: 1 to 100 characters of `[A-Za-z0-9_.-]`.
    GroupName,
    GROUP_NAME_MAX
);

impl UserId {
    /// The group every connection of this user joins: `user_<id>`.
    pub fn group(&self) -> GroupName {
        GroupName(format!("{USER_GROUP_PREFIX}{}", self.0))
    }
}

impl GroupName {
    /// The user whose personal group this is, if it is one (`user_42` -> `42`).
    pub fn personal_user(&self) -> Option<&str> {
        self.0
            .strip_prefix(USER_GROUP_PREFIX)
            .filter(|u| !u.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_follow_the_contract() {
        assert!(UserId::parse("42").is_ok());
        assert!(UserId::parse("a.B_c-9").is_ok());
        assert!(UserId::parse("x".repeat(64)).is_ok());
        assert_eq!(UserId::parse(""), Err(IdError::Empty));
        assert_eq!(
            UserId::parse("x".repeat(65)),
            Err(IdError::TooLong { max: 64 })
        );
        assert_eq!(UserId::parse("a b"), Err(IdError::BadChar(' ')));
        assert_eq!(UserId::parse("é"), Err(IdError::BadChar('é')));
    }

    #[test]
    fn group_names_follow_the_contract() {
        assert!(GroupName::parse("org_5").is_ok());
        assert!(GroupName::parse("g".repeat(100)).is_ok());
        assert!(GroupName::parse("g".repeat(101)).is_err());
        assert!(GroupName::parse("a/b").is_err());
    }

    #[test]
    fn personal_group_round_trips() {
        let u = UserId::parse("42").unwrap();
        assert_eq!(u.group().as_str(), "user_42");
        assert_eq!(u.group().personal_user(), Some("42"));
        assert_eq!(GroupName::parse("org_5").unwrap().personal_user(), None);
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<UserId>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<UserId>("\"not ok\"").is_err());
    }
}
