//! The OS tuning profile: read it, compare it with the live host, apply it.
//!
//! The profile lives in one file, `ops/tuning/profile.conf`, embedded here at build
//! time (an operator may point `HERALD_TUNING_PROFILE` at another). Sysctls are read
//! and written as files under `/proc/sys` (no crate has a sysctl call; a different
//! root stands in for tests and containers); the open-file limit is the process's
//! RLIMIT_NOFILE. Applying never hides a failure: each item reports `applied`,
//! `already` or `failed` with the reason (read-only /proc, no permission, missing
//! key, hard limit lower than wanted).

use std::path::{Path, PathBuf};

use herald_shared::admin::{
    ApplyItem, ApplyReport, ApplyResult, TuningItem, TuningOp, TuningReport,
};

/// The profile shipped with Herald.
pub const EMBEDDED: &str = include_str!("../../ops/tuning/profile.conf");

/// The key of the open-file limit item.
pub const NOFILE: &str = "nofile";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub key: String,
    pub op: TuningOp,
    /// Whitespace-separated numbers, normalised to single spaces.
    pub want: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub items: Vec<Item>,
}

fn normalise(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Profile {
    /// Parses the profile syntax (see the file's header).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut name = None;
        let mut items = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |why: &str| format!("profile line {}: {why}: {raw:?}", n + 1);
            // The profile writes an operator as the wire does. `ALL` tries `>=` and
            // `<=` before `=`, which each of them contains.
            let Some((key, op, value)) = TuningOp::ALL
                .iter()
                .find_map(|&op| line.split_once(op.as_str()).map(|(k, v)| (k, op, v)))
            else {
                return Err(bad(
                    "expected `key >= value`, `key <= value` or `key = value`",
                ));
            };
            let (key, value) = (key.trim(), normalise(value));
            if key == "profile" {
                name = Some(value);
                continue;
            }
            if key.is_empty() || value.is_empty() {
                return Err(bad("empty key or value"));
            }
            check_key(key).map_err(|why| bad(&why))?;
            let numbers: Result<Vec<u64>, _> = value.split(' ').map(str::parse::<u64>).collect();
            if numbers.is_err() {
                return Err(bad("values are whole numbers"));
            }
            if key == NOFILE && op != TuningOp::AtLeast {
                return Err(bad(
                    "the open-file limit can only be raised: use `nofile >= N`",
                ));
            }
            if op != TuningOp::Exactly && value.contains(' ') {
                return Err(bad(">= and <= compare a single number"));
            }
            items.push(Item {
                key: key.to_owned(),
                op,
                want: value,
            });
        }
        Ok(Self {
            name: name.ok_or("profile has no `profile = <name>` line")?,
            items,
        })
    }

    pub fn embedded() -> Self {
        Self::parse(EMBEDDED).expect("the shipped profile parses (tested)")
    }

    /// Loads `path`, or the embedded profile when none is given.
    pub fn load(path: Option<&Path>) -> Result<Self, String> {
        match path {
            None => Ok(Self::embedded()),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("tuning profile {}: {e}", p.display()))?;
                Self::parse(&text)
            }
        }
    }
}

/// Refuses a key that is not a sysctl name (or [`NOFILE`]): dot-separated segments
/// of `a-z`, `0-9`, `_` and `-` (as in `fs.file-max`), none empty and none starting
/// with `-`. A key becomes a path under the sysctl root, and `Path::join` of an
/// absolute path replaces the root: `.etc.shadow` would be `/etc/shadow`. So no
/// leading or trailing dot, no `..`, no `/`, nothing else.
pub fn check_key(key: &str) -> Result<(), String> {
    let segment_ok = |s: &str| {
        !s.is_empty()
            && !s.starts_with('-')
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    };
    if key.len() > 128 || !key.split('.').all(segment_ok) {
        return Err(format!(
            "key {key:?} is not a sysctl name: dot-separated segments of a-z, 0-9, _ and - (like net.core.somaxconn), none empty, no leading dot"
        ));
    }
    Ok(())
}

/// Whether `have` satisfies `op want`.
fn satisfied(op: TuningOp, want: &str, have: &str) -> bool {
    let have = normalise(have);
    match op {
        TuningOp::Exactly => have == want,
        TuningOp::AtLeast | TuningOp::AtMost => match (want.parse::<u64>(), have.parse::<u64>()) {
            (Ok(w), Ok(h)) => {
                if op == TuningOp::AtLeast {
                    h >= w
                } else {
                    h <= w
                }
            }
            _ => false,
        },
    }
}

/// The host the profile is compared with: its sysctl tree and this process.
#[derive(Debug, Clone)]
pub struct Host {
    pub sysctl_root: PathBuf,
}

impl Default for Host {
    fn default() -> Self {
        Self {
            sysctl_root: PathBuf::from("/proc/sys"),
        }
    }
}

impl Host {
    /// The file of sysctl `key`: its segments as directories under the root. A key
    /// that is not a sysctl name ([`check_key`]), or a path that would leave the
    /// root, is refused, whatever made the key (a profile is checked when parsed;
    /// this holds for every caller).
    fn path(&self, key: &str) -> Result<PathBuf, String> {
        check_key(key)?;
        let mut path = self.sysctl_root.clone();
        path.extend(key.split('.'));
        let inside = path.strip_prefix(&self.sysctl_root).is_ok_and(|rest| {
            rest.components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
        });
        if !inside {
            return Err(format!("key {key:?} leaves the sysctl root"));
        }
        Ok(path)
    }

    /// The current value of `key` (a sysctl, or `nofile`).
    pub fn read(&self, key: &str) -> Result<String, String> {
        if key == NOFILE {
            let (soft, _) =
                rlimit::getrlimit(rlimit::Resource::NOFILE).map_err(|e| e.to_string())?;
            return Ok(soft.to_string());
        }
        std::fs::read_to_string(self.path(key)?)
            .map(|v| normalise(&v))
            .map_err(|e| describe(&e))
    }

    fn write(&self, key: &str, value: &str) -> Result<(), String> {
        std::fs::write(self.path(key)?, format!("{value}\n")).map_err(|e| describe(&e))
    }
}

fn describe(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        NotFound => "no such key on this kernel".to_owned(),
        PermissionDenied => "permission denied (run as root or with CAP_SYS_ADMIN)".to_owned(),
        ReadOnlyFilesystem => "read-only /proc/sys (a container without privileges?)".to_owned(),
        _ => e.to_string(),
    }
}

/// Compares every item of `profile` with `host`.
pub fn check(profile: &Profile, host: &Host) -> TuningReport {
    TuningReport {
        profile: profile.name.clone(),
        items: profile
            .items
            .iter()
            .map(|item| {
                let have = host.read(&item.key);
                TuningItem {
                    key: item.key.clone(),
                    want: item.want.clone(),
                    op: item.op,
                    ok: have
                        .as_deref()
                        .is_ok_and(|h| satisfied(item.op, &item.want, h)),
                    have: have.unwrap_or_else(|e| format!("unreadable: {e}")),
                }
            })
            .collect(),
    }
}

/// Applies every item of `profile` to `host` and this process.
pub fn apply(profile: &Profile, host: &Host) -> ApplyReport {
    ApplyReport {
        profile: profile.name.clone(),
        items: profile
            .items
            .iter()
            .map(|item| apply_one(item, host))
            .collect(),
    }
}

fn apply_one(item: &Item, host: &Host) -> ApplyItem {
    let done = |result, detail: String| ApplyItem {
        key: item.key.clone(),
        result,
        detail,
    };
    let before = match host.read(&item.key) {
        Ok(v) => v,
        Err(e) => return done(ApplyResult::Failed, e),
    };
    if satisfied(item.op, &item.want, &before) {
        return done(
            ApplyResult::Already,
            format!("{before} satisfies {} {}", item.op, item.want),
        );
    }
    if item.key == NOFILE {
        return apply_nofile(item, &before);
    }
    if let Err(e) = host.write(&item.key, &item.want) {
        return done(ApplyResult::Failed, format!("writing {}: {e}", item.want));
    }
    match host.read(&item.key) {
        Ok(after) if satisfied(item.op, &item.want, &after) => {
            done(ApplyResult::Applied, format!("{before} -> {after}"))
        }
        Ok(after) => done(
            ApplyResult::Failed,
            format!("wrote {} but the kernel kept {after}", item.want),
        ),
        Err(e) => done(ApplyResult::Failed, format!("reading back: {e}")),
    }
}

/// Raises the soft open-file limit as far as the hard limit allows.
fn apply_nofile(item: &Item, before: &str) -> ApplyItem {
    let want: u64 = item.want.parse().unwrap_or(0);
    let (result, detail) = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Err(e) => (ApplyResult::Failed, format!("getrlimit: {e}")),
        Ok((soft, hard)) => {
            let target = want.min(hard);
            let raised = if target > soft {
                rlimit::setrlimit(rlimit::Resource::NOFILE, target, hard).map_err(|e| e.to_string())
            } else {
                Ok(())
            };
            match raised {
                Err(e) => (ApplyResult::Failed, format!("setrlimit: {e}")),
                Ok(()) if target < want => (
                    ApplyResult::Failed,
                    if target > soft {
                        format!(
                            "hard limit {hard} is lower than {want}; soft limit raised from {before} to {target} (raise the hard limit: LimitNOFILE or limits.d)"
                        )
                    } else {
                        format!(
                            "hard limit {hard} is lower than {want}; the soft limit is already at it (raise the hard limit: LimitNOFILE or limits.d)"
                        )
                    },
                ),
                Ok(()) => (ApplyResult::Applied, format!("{before} -> {target}")),
            }
        }
    };
    ApplyItem {
        key: item.key.clone(),
        result,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_profile_parses_and_covers_the_contract() {
        let p = Profile::embedded();
        assert_eq!(p.name, "herald-100k");
        for key in [
            "net.core.somaxconn",
            "net.ipv4.tcp_max_syn_backlog",
            "net.ipv4.ip_local_port_range",
            "fs.file-max",
            NOFILE,
        ] {
            assert!(p.items.iter().any(|i| i.key == key), "profile lacks {key}");
        }
    }

    #[test]
    fn parse_refuses_what_it_cannot_compare() {
        assert!(Profile::parse("a.b >= 1").is_err(), "no name");
        assert!(Profile::parse("profile = x\na.b >= lots").is_err());
        assert!(Profile::parse("profile = x\na.b >= 1 2").is_err());
        assert!(Profile::parse("profile = x\n../etc/passwd = 1").is_err());
        for key in [
            ".etc.shadow",
            "etc.shadow.",
            "a..b",
            "a/b",
            "A.b",
            "a.-b",
            "a b.c",
            "net.core.*",
        ] {
            let err = Profile::parse(&format!("profile = x\n{key} = 1")).unwrap_err();
            assert!(err.contains("is not a sysctl name"), "{key}: {err}");
        }
        assert!(Profile::parse("profile = x\na.b").is_err());
        assert!(
            Profile::parse("profile = x\nnofile <= 10").is_err(),
            "nofile only >="
        );
        let p = Profile::parse("profile = x # c\na.b = 1\t 2 # range\n").unwrap();
        assert_eq!(p.items[0].want, "1 2");
        assert_eq!(p.items[0].op, TuningOp::Exactly);
        let p = Profile::parse("profile = x\na.b >= 1\nc.d <= 2\n").unwrap();
        let ops: Vec<_> = p.items.iter().map(|i| (i.op, i.want.as_str())).collect();
        assert_eq!(ops, [(TuningOp::AtLeast, "1"), (TuningOp::AtMost, "2")]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Any text: a profile, or one of the documented refusals naming its line.
        #[test]
        fn any_text_parses_or_names_its_line(
            lines in proptest::collection::vec(
                "(profile|nofile|[a-z]{1,4}(\\.[a-z_]{1,4}){0,2}|\\.\\./x)? ?(>=|<=|=|#)? ?([0-9]{1,3}|x)? ?([0-9]{1,3})?",
                0..6,
            )
        ) {
            let text = lines.join("\n");
            match Profile::parse(&text) {
                Ok(p) => {
                    proptest::prop_assert!(p.items.len() <= lines.len());
                    for i in &p.items {
                        proptest::prop_assert!(i.want.split(' ').all(|n| n.parse::<u64>().is_ok()));
                    }
                }
                Err(e) => {
                    let line = e
                        .strip_prefix("profile line ")
                        .and_then(|r| r.split(':').next())
                        .and_then(|n| n.parse::<usize>().ok());
                    proptest::prop_assert!(
                        line.is_some_and(|n| (1..=lines.len()).contains(&n))
                            || e == "profile has no `profile = <name>` line",
                        "{e}"
                    );
                }
            }
        }

        /// Well-formed items read back as written.
        #[test]
        fn well_formed_profiles_read_back(
            items in proptest::collection::vec(("[a-z]{1,5}\\.[a-z_]{1,5}", 0usize..3, proptest::num::u64::ANY), 0..5)
        ) {
            let ops = [TuningOp::AtLeast, TuningOp::AtMost, TuningOp::Exactly];
            let mut text = String::from("profile = p\n");
            for (k, op, n) in &items {
                text.push_str(&format!("{k} {} {n}  # note\n", ops[*op].as_str()));
            }
            let p = Profile::parse(&text).unwrap();
            let got: Vec<_> = p.items.iter().map(|i| (i.key.clone(), i.op, i.want.clone())).collect();
            let want: Vec<_> = items.iter().map(|(k, op, n)| (k.clone(), ops[*op], n.to_string())).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn keys_are_sysctl_names_and_stay_under_the_root() {
        for ok in [
            "net.core.somaxconn",
            "fs.file-max",
            "fs.nr_open",
            "net.ipv4.conf.eth0.rp_filter",
            NOFILE,
        ] {
            assert_eq!(check_key(ok), Ok(()), "{ok}");
        }
        let host = Host {
            sysctl_root: PathBuf::from("/tmp/sysctl-root"),
        };
        assert_eq!(
            host.path("fs.file-max").unwrap(),
            PathBuf::from("/tmp/sysctl-root/fs/file-max")
        );
        // The key that motivated the rule: with the old `join`, an absolute path.
        assert!(
            PathBuf::from("/proc/sys")
                .join(".etc.shadow".replace('.', "/"))
                .starts_with("/etc")
        );
        let err = host.read(".etc.shadow").unwrap_err();
        assert!(err.contains("is not a sysctl name"), "{err}");
        assert!(host.write("..", "1").is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any key: refused, or a path strictly under the root with one directory
        /// per segment; never a panic.
        #[test]
        fn any_key_is_refused_or_stays_under_the_root(key in "[a-z0-9_./ A-Z-]{0,12}|(\\.|\\.\\.|/)?[a-z]{1,3}(\\.{1,2}[a-z-]{0,3}){0,3}") {
            let host = Host { sysctl_root: PathBuf::from("/proc/sys") };
            match host.path(&key) {
                Ok(p) => {
                    proptest::prop_assert!(check_key(&key).is_ok());
                    let rest = p.strip_prefix("/proc/sys").unwrap();
                    proptest::prop_assert_eq!(rest.components().count(), key.split('.').count());
                    proptest::prop_assert!(rest.components().all(|c| matches!(c, std::path::Component::Normal(_))));
                    proptest::prop_assert!(!key.starts_with('.') && !key.contains("..") && !key.contains('/'));
                }
                Err(e) => proptest::prop_assert!(e.contains("is not a sysctl name"), "{}", e),
            }
        }
    }

    #[test]
    fn comparisons() {
        assert!(satisfied(TuningOp::AtLeast, "65535", "65535"));
        assert!(satisfied(TuningOp::AtLeast, "65535", "9223372036854775807"));
        assert!(!satisfied(TuningOp::AtLeast, "65535", "4096"));
        assert!(satisfied(TuningOp::AtMost, "15", "10"));
        assert!(!satisfied(TuningOp::AtMost, "15", "60"));
        assert!(satisfied(TuningOp::Exactly, "1024 65535", "1024\t65535"));
        assert!(!satisfied(TuningOp::Exactly, "1024 65535", "32768 60999"));
        assert!(!satisfied(TuningOp::AtLeast, "1", "garbage"));
    }
}
