//! `wire_enum!`: a closed set of names on the wire as a Rust enum.
//!
//! Each variant is written once with its wire name, and serde, `as_str` and
//! `Display` all come from that one literal, so the JSON a node writes, the text a
//! log line or an error message shows, and what a reader matches on cannot drift
//! apart. `ALL` lists the variants, for tests that pin every name.

macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $wire:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $wire)] $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The name on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $wire,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                // `pad`, not `write_str`: a table cell's width and alignment apply.
                f.pad(self.as_str())
            }
        }
    };
}

pub(crate) use wire_enum;
