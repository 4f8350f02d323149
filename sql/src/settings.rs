//! The settings `SET key = value` takes: one list, shared by `weir run`
//! (a job file's `SET`s), `weir -f` scripts and the shell.
//!
//! Each setting says where it applies. A job file may set what a run needs
//! (`trigger`, `drain`, `threads`, `state.ttl`, `window.max_windows_per_row`,
//! `checkpoint.retain_epochs`, `storage.retry_*`);
//! command-line flags override it. `checkpoint_dir` places the shell's
//! background queries and means nothing to `weir run` (which takes
//! `--checkpoint`), so a job file that sets it is refused. An unknown key is
//! refused with the nearest known one.

use std::time::Duration;

use datafusion::sql::sqlparser::tokenizer::Token;

use crate::{Error, Result};

/// Where a setting applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Job files (`weir run`), scripts and the shell.
    Everywhere,
    /// The shell and its scripts (`weir -f`, `weir -i`, piped input) only.
    Shell,
}

/// A setting: its name, what values it takes, and its default.
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    /// The key, lower-case.
    pub name: &'static str,
    /// What values it takes, for messages and `SET` alone.
    pub values: &'static str,
    /// The default, as text.
    pub default: &'static str,
    /// What it does.
    pub help: &'static str,
    /// Where it applies.
    pub scope: Scope,
}

/// Every setting.
pub const SETTINGS: &[Setting] = &[
    Setting {
        name: "trigger",
        values: "available-now, once, or an interval such as 1s",
        default: "1s",
        help: "when epochs run (weir run --trigger)",
        scope: Scope::Everywhere,
    },
    Setting {
        name: "drain",
        values: "true or false",
        default: "false",
        help: "declare the input complete after the last batch, closing every window (weir run --drain)",
        scope: Scope::Everywhere,
    },
    Setting {
        name: "threads",
        values: "a whole number, 0 for one per CPU",
        default: "0",
        help: "threads a query runs on (weir run --threads)",
        scope: Scope::Everywhere,
    },
    Setting {
        name: "state.ttl",
        values: "a duration such as 1h",
        default: "",
        help: "expire groups of aggregates without a window after this long without updates",
        scope: Scope::Everywhere,
    },
    Setting {
        name: "window.max_windows_per_row",
        values: "a whole number",
        default: "10000",
        help: "refuse a HOP or CUMULATE that puts each row in more windows than this",
        scope: Scope::Everywhere,
    },
    Setting {
        name: "checkpoint.retain_epochs",
        values: "a whole number, at least 1",
        default: "20",
        help: "committed epochs a checkpoint keeps restorable (older logs, state files and sink manifests are deleted)",
        scope: Scope::Everywhere,
    },
    Setting {
        name: "storage.retry_attempts",
        values: "a whole number from 1 to 100",
        default: "5",
        help: "attempts of a store operation that failed for a reason that can pass, the first included",
        scope: Scope::Everywhere,
    },
    Setting {
        name: "storage.retry_backoff",
        values: "a duration such as 50ms",
        default: "50ms",
        help: "the wait before a store operation's first retry; it doubles for each retry after",
        scope: Scope::Everywhere,
    },
    Setting {
        name: "storage.retry_max_backoff",
        values: "a duration such as 2s",
        default: "2s",
        help: "the longest wait between two attempts of a store operation",
        scope: Scope::Everywhere,
    },
    Setting {
        name: "checkpoint_dir",
        values: "a folder or URL",
        default: ".weir/checkpoints",
        help: "where the shell's background queries keep their checkpoints (weir run takes --checkpoint)",
        scope: Scope::Shell,
    },
    Setting {
        name: "metrics",
        values: "PORT, :PORT or HOST:PORT (on 127.0.0.1 unless a host is given), or off",
        default: "off",
        help: "serve the background queries' metrics for Prometheus at http://ADDR/metrics (weir run takes --metrics)",
        scope: Scope::Shell,
    },
];

/// The default of `window.max_windows_per_row`.
pub const DEFAULT_MAX_WINDOWS_PER_ROW: u64 = 10_000;

/// The most threads a query may ask for: each is an OS thread with its
/// own stack and state shard, and far more than the machine has cores
/// only costs memory (100,000 of them aborted the process).
pub const MAX_THREADS: usize = 1024;

/// `SET 'key' = 'value'` (Flink's form; quotes optional, `TO` for `=`) →
/// the pair, the key checked against the settings (`crate::settings`).
pub fn parse_set(text: &str) -> Result<Option<(String, String)>> {
    parse_set_in(text, Scope::Shell)
}

/// [`parse_set`] where only settings of `scope` are offered for a name
/// not known (`Scope::Everywhere`: a job file's, whose "did you mean"
/// must not be a shell setting it then refuses). A shell setting named
/// exactly is still returned, for the caller to refuse by name.
pub fn parse_set_in(text: &str, scope: Scope) -> Result<Option<(String, String)>> {
    let tokens: Vec<Token> = crate::preprocess::tokens(text)?
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    let is_set = matches!(tokens.first(), Some(Token::Word(w)) if w.value.eq_ignore_ascii_case("SET"));
    if !is_set {
        return Ok(None);
    }
    let word = |t: &Token| match t {
        Token::SingleQuotedString(s) | Token::DoubleQuotedString(s) => Some(s.clone()),
        Token::Word(w) => Some(w.value.clone()),
        Token::Number(n, _) => Some(n.clone()),
        _ => None,
    };
    let usage = || Error::Syntax("expected SET 'key' = 'value'".into());
    // Keys may be dotted when unquoted: SET state.ttl = '1h'.
    let eq = tokens
        .iter()
        .position(|t| *t == Token::Eq || matches!(t, Token::Word(w) if w.value.eq_ignore_ascii_case("TO")))
        .ok_or_else(usage)?;
    if eq < 2 {
        return Err(usage());
    }
    let key: String = tokens[1..eq]
        .iter()
        .map(|t| word(t).unwrap_or_else(|| t.to_string()))
        .collect();
    let setting = lookup_in(&key, scope)?;
    let value = match &tokens[eq + 1..] {
        [v] => word(v),
        _ => None,
    }
    .ok_or_else(|| {
        Error::Syntax(format!(
            "SET {} needs one value ({}); quote a value with spaces or signs",
            setting.name, setting.values
        ))
    })?;
    let value = check(setting, &value)?;
    Ok(Some((setting.name.to_string(), value)))
}

/// The setting named `key` (case-insensitive), or an error naming the
/// nearest known one.
pub fn lookup(key: &str) -> Result<&'static Setting> {
    lookup_in(key, Scope::Shell)
}

/// [`lookup`], offering only settings of `scope` when `key` is unknown
/// (every setting for `Scope::Shell`, which has them all).
pub fn lookup_in(key: &str, scope: Scope) -> Result<&'static Setting> {
    let key = key.to_ascii_lowercase();
    if let Some(s) = SETTINGS.iter().find(|s| s.name == key) {
        return Ok(s);
    }
    let names: Vec<&str> = SETTINGS
        .iter()
        .filter(|s| scope == Scope::Shell || s.scope == scope)
        .map(|s| s.name)
        .collect();
    let hint = nearest(&key, &names)
        .map(|n| format!("did you mean '{n}'? "))
        .unwrap_or_default();
    Err(Error::Plan(format!(
        "unknown setting '{key}' ({hint}settings: {})",
        names.join(", ")
    )))
}

/// Checks a value for a setting; returns it normalized.
pub fn check(setting: &Setting, value: &str) -> Result<String> {
    let v = value.trim();
    let bad = || {
        Error::Plan(format!(
            "SET {} = '{v}': expected {}",
            setting.name, setting.values
        ))
    };
    match setting.name {
        "trigger" => {
            let lower = v.to_ascii_lowercase().replace('_', "-");
            if lower == "available-now" || lower == "once" {
                return Ok(lower);
            }
            match humantime::parse_duration(v) {
                Ok(d) if !d.is_zero() => Ok(v.to_string()),
                _ => Err(bad()),
            }
        }
        "drain" => match v.to_ascii_lowercase().as_str() {
            "true" | "on" => Ok("true".into()),
            "false" | "off" => Ok("false".into()),
            _ => Err(bad()),
        },
        "threads" => match v.parse::<usize>() {
            Ok(n) if n <= MAX_THREADS => Ok(n.to_string()),
            Ok(n) => Err(Error::Plan(format!(
                "SET 'threads' = '{n}': at most {MAX_THREADS} threads (0 is one per CPU)"
            ))),
            _ => Err(bad()),
        },
        "window.max_windows_per_row" => match v.parse::<u64>() {
            Ok(n) if n > 0 => Ok(n.to_string()),
            _ => Err(bad()),
        },
        "checkpoint.retain_epochs" => match v.parse::<u64>() {
            Ok(n) if n > 0 => Ok(n.to_string()),
            _ => Err(bad()),
        },
        "storage.retry_attempts" => match v.parse::<u32>() {
            Ok(n) if (1..=100).contains(&n) => Ok(n.to_string()),
            _ => Err(bad()),
        },
        "state.ttl" | "storage.retry_backoff" | "storage.retry_max_backoff" => {
            parse_duration(v).map(|_| v.to_string()).ok_or_else(bad)
        }
        _ => Ok(v.to_string()),
    }
}

/// A duration as settings write it (`30s`, `1h`, `500ms`).
pub fn parse_duration(v: &str) -> Option<Duration> {
    humantime::parse_duration(v.trim()).ok().filter(|d| !d.is_zero())
}

/// The candidate nearest to `word` by edit distance, if it is near enough
/// to be a likely typo.
pub fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (edit_distance(&word, c), *c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_get_the_nearest_known_one() {
        let e = lookup("state.tl").unwrap_err().to_string();
        assert!(e.contains("did you mean 'state.ttl'"), "{e}");
        let e = lookup("trigegr").unwrap_err().to_string();
        assert!(e.contains("did you mean 'trigger'"), "{e}");
        let e = lookup("colour").unwrap_err().to_string();
        assert!(
            !e.contains("did you mean") && e.contains("settings: trigger"),
            "{e}"
        );
        assert_eq!(lookup("STATE.TTL").unwrap().name, "state.ttl");
    }

    #[test]
    fn a_job_file_is_not_offered_shell_settings() {
        let e = parse_set_in("SET metric = '9464'", Scope::Everywhere)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("metrics") && !e.contains("checkpoint_dir"), "{e}");
        let e = parse_set("SET metric = '9464'").unwrap_err().to_string();
        assert!(e.contains("did you mean 'metrics'?"), "{e}");
        // Named exactly, it is returned for the job to refuse by name.
        let set = parse_set_in("SET metrics = '9464'", Scope::Everywhere).unwrap();
        assert_eq!(set.unwrap().0, "metrics");
    }

    #[test]
    fn values_are_checked() {
        let t = lookup("trigger").unwrap();
        assert_eq!(check(t, "Available_Now").unwrap(), "available-now");
        assert_eq!(check(t, "5s").unwrap(), "5s");
        assert!(check(t, "soon").is_err() && check(t, "0s").is_err());
        assert_eq!(check(lookup("drain").unwrap(), "ON").unwrap(), "true");
        assert!(check(lookup("state.ttl").unwrap(), "forever").is_err());
        assert!(check(lookup("window.max_windows_per_row").unwrap(), "0").is_err());
        let retain = lookup("checkpoint.retain_epochs").unwrap();
        assert_eq!(check(retain, " 3 ").unwrap(), "3");
        assert!(check(retain, "0").is_err() && check(retain, "many").is_err());
        let attempts = lookup("storage.retry_attempts").unwrap();
        assert_eq!(check(attempts, "1").unwrap(), "1");
        assert!(check(attempts, "0").is_err() && check(attempts, "101").is_err());
        assert_eq!(
            check(lookup("storage.retry_backoff").unwrap(), "10ms").unwrap(),
            "10ms"
        );
        assert!(check(lookup("storage.retry_max_backoff").unwrap(), "-1").is_err());
        let e = parse_set("SET checkpoint.retain = 3").unwrap_err().to_string();
        assert!(e.contains("did you mean 'checkpoint.retain_epochs'"), "{e}");
    }

    #[test]
    fn every_default_passes_its_own_check() {
        for s in SETTINGS.iter().filter(|s| !s.default.is_empty()) {
            assert!(check(s, s.default).is_ok(), "{}", s.name);
        }
    }
}
