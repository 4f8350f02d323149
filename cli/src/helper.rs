//! The line editor's helper (after datafusion-cli's `helper.rs`): it
//! completes words on Tab. (Statements that span lines are collected by the
//! shell's loop, line by line under a continuation prompt, as psql does.)
//!
//! Completion offers keywords, declared tables, their columns and
//! DataFusion's functions; after `FROM`, `JOIN`, `INTO`, `TABLE` or `\d`,
//! only tables; inside a quoted string, file paths (for `'path'` options and
//! queries over files); after `\`, the shell's commands.

use rustyline::completion::{Completer, FilenameCompleter, Pair};
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Context, Helper};

/// SQL words worth completing: what Weir's statements use.
const KEYWORDS: &[&str] = &[
    "ALL",
    "AND",
    "AS",
    "ASC",
    "BETWEEN",
    "BIGINT",
    "BOOLEAN",
    "BY",
    "CASE",
    "CAST",
    "CREATE",
    "CUMULATE",
    "DATE",
    "DECIMAL",
    "DESC",
    "DESCRIBE",
    "DESCRIPTOR",
    "DISTINCT",
    "DOUBLE",
    "DROP",
    "ELSE",
    "END",
    "EXISTS",
    "EXPLAIN",
    "FALSE",
    "FILTER",
    "FROM",
    "GROUP",
    "HAVING",
    "HOP",
    "IF",
    "IN",
    "INSERT",
    "INT",
    "INTEGER",
    "INTERVAL",
    "INTO",
    "IS",
    "JOIN",
    "LIKE",
    "LIMIT",
    "NOT",
    "NULL",
    "ON",
    "OR",
    "ORDER",
    "QUERIES",
    "QUERY",
    "SECOND",
    "MINUTE",
    "HOUR",
    "DAY",
    "SELECT",
    "SESSION",
    "SET",
    "SHOW",
    "STOP",
    "TABLE",
    "TABLES",
    "THEN",
    "TIMESTAMP",
    "TRUE",
    "TUMBLE",
    "UNION",
    "VALUES",
    "VARCHAR",
    "WATERMARK",
    "WHEN",
    "WHERE",
    "WITH",
];

/// The shell's `\` commands.
pub const COMMANDS: &[&str] = &["\\?", "\\d", "\\format", "\\maxrows", "\\q", "\\timing"];

/// Words after which only a table name fits.
const BEFORE_TABLE: &[&str] = &["FROM", "JOIN", "INTO", "TABLE", "DESCRIBE", "DESC", "\\D"];

/// The line editor's helper.
pub struct ShellHelper {
    /// Declared tables and their columns.
    tables: Vec<(String, Vec<String>)>,
    /// Function names.
    functions: Vec<String>,
    files: FilenameCompleter,
}

impl ShellHelper {
    /// A helper completing these function names.
    pub fn new(mut functions: Vec<String>) -> Self {
        functions.sort();
        functions.dedup();
        Self {
            tables: Vec::new(),
            functions,
            files: FilenameCompleter::new(),
        }
    }

    /// The declared tables and their columns, after the catalog changed.
    pub fn set_tables(&mut self, tables: Vec<(String, Vec<String>)>) {
        self.tables = tables;
    }

    /// The completions of the word before `pos`: where it starts, and the
    /// candidates.
    pub fn candidates(&self, line: &str, pos: usize) -> (usize, Vec<Pair>) {
        let before = &line[..pos];
        let start = before
            .char_indices()
            .rev()
            .find(|(_, c)| !(c.is_alphanumeric() || matches!(c, '_' | '.' | '\\')))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let word = &before[start..];
        let pair = |s: &str| Pair {
            display: s.to_string(),
            replacement: s.to_string(),
        };
        if word.starts_with('\\') {
            let found = COMMANDS
                .iter()
                .filter(|c| c.starts_with(word))
                .map(|c| pair(c))
                .collect();
            return (start, found);
        }
        let previous = before[..start]
            .split_whitespace()
            .next_back()
            .unwrap_or("")
            .to_ascii_uppercase();
        let mut found: Vec<String> = Vec::new();
        if let Some((table, prefix)) = word.rsplit_once('.') {
            // table.column
            for (t, cols) in &self.tables {
                if t.eq_ignore_ascii_case(table) {
                    found.extend(
                        cols.iter()
                            .filter(|c| starts_with_ci(c, prefix))
                            .map(|c| format!("{table}.{c}")),
                    );
                }
            }
        } else if BEFORE_TABLE.contains(&previous.as_str()) {
            found.extend(
                self.tables
                    .iter()
                    .map(|(t, _)| t.clone())
                    .filter(|t| starts_with_ci(t, word)),
            );
        } else if !word.is_empty() {
            let mut columns: Vec<String> = self
                .tables
                .iter()
                .flat_map(|(_, cols)| cols.iter().cloned())
                .filter(|c| starts_with_ci(c, word))
                .collect();
            columns.sort();
            found.extend(columns);
            found.extend(
                self.tables
                    .iter()
                    .map(|(t, _)| t.clone())
                    .filter(|t| starts_with_ci(t, word)),
            );
            found.extend(self.functions.iter().filter(|f| starts_with_ci(f, word)).cloned());
            // Keywords in the case the user types them in.
            let lower = word.chars().any(|c| c.is_lowercase()) && !word.chars().any(|c| c.is_uppercase());
            found.extend(KEYWORDS.iter().filter(|k| starts_with_ci(k, word)).map(|k| {
                if lower {
                    k.to_ascii_lowercase()
                } else {
                    k.to_string()
                }
            }));
        }
        let mut seen = std::collections::HashSet::new();
        found.retain(|f| seen.insert(f.clone()));
        (start, found.iter().map(|f| pair(f)).collect())
    }
}

fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len()
        && s.is_char_boundary(prefix.len())
        && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Whether the end of `text` is inside a single-quoted string.
fn in_single_quote(text: &str) -> bool {
    let mut inside = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => inside = !inside,
            '-' if !inside && chars.peek() == Some(&'-') => {
                // A comment to the end of the line.
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    inside
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        if in_single_quote(&line[..pos]) {
            return self.files.complete_path(line, pos);
        }
        Ok(self.candidates(line, pos))
    }
}

/// Every line is taken as typed: the shell itself collects the lines of an
/// unfinished statement, under a continuation prompt (`   -> `), as psql
/// does. (A statement recalled from history comes back whole.)
impl Validator for ShellHelper {
    fn validate(&self, _ctx: &mut ValidationContext<'_>) -> rustyline::Result<ValidationResult> {
        Ok(ValidationResult::Valid(None))
    }
}

impl Hinter for ShellHelper {
    type Hint = String;
}

impl Highlighter for ShellHelper {}

impl Helper for ShellHelper {}

#[cfg(test)]
mod tests {
    use super::*;

    fn helper() -> ShellHelper {
        let mut h = ShellHelper::new(vec!["upper".into(), "date_bin".into(), "date_trunc".into()]);
        h.set_tables(vec![
            (
                "bids".into(),
                vec!["auction".into(), "price".into(), "date_time".into()],
            ),
            ("hot_items".into(), vec![]),
        ]);
        h
    }

    fn complete(line: &str) -> Vec<String> {
        helper()
            .candidates(line, line.len())
            .1
            .into_iter()
            .map(|p| p.replacement)
            .collect()
    }

    #[test]
    fn after_from_only_tables_complete() {
        assert_eq!(complete("SELECT * FROM hot_"), vec!["hot_items"]);
        assert_eq!(complete("select * from "), vec!["bids", "hot_items"]);
        assert_eq!(complete("\\d b"), vec!["bids"]);
        assert_eq!(complete("INSERT INTO h"), vec!["hot_items"]);
        let (start, _) = helper().candidates("SELECT * FROM hot_", 18);
        assert_eq!(start, 14);
    }

    #[test]
    fn elsewhere_columns_tables_functions_and_keywords_complete() {
        assert_eq!(
            complete("SELECT da"),
            vec!["date_time", "date_bin", "date_trunc", "date", "day"]
        );
        assert_eq!(
            complete("SELECT DA"),
            vec!["date_time", "date_bin", "date_trunc", "DATE", "DAY"]
        );
        assert_eq!(complete("select pri"), vec!["price"]);
        assert_eq!(complete("sel"), vec!["select"], "keywords keep the user's case");
        assert_eq!(complete("SEL"), vec!["SELECT"]);
        assert_eq!(complete("SELECT bids.a"), vec!["bids.auction"]);
        assert!(
            complete("SELECT ").is_empty(),
            "nothing to complete without a prefix"
        );
    }

    #[test]
    fn commands_complete_after_a_backslash() {
        assert_eq!(complete("\\ti"), vec!["\\timing"]);
        assert_eq!(complete("\\"), COMMANDS.to_vec());
    }

    #[test]
    fn quotes_switch_to_file_paths() {
        assert!(in_single_quote("SELECT * FROM 'out/"));
        assert!(!in_single_quote("SELECT 'a' FROM "));
        assert!(!in_single_quote("SELECT 1 -- it's\nFROM "));
    }
}
