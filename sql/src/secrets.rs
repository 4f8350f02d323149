//! Finding secrets in SQL text before it is parsed.
//!
//! A credential typed into a `WITH (...)` clause or a `SET` must never be
//! printed, even when the statement does not parse: a missing `=`
//! (`'s3.secret_access_key' 'SECRET'`) makes the parser quote the value back
//! in its error. So the text is scanned here, with a scanner that knows only
//! quotes and comments (it cannot fail, whatever the text), for a quoted
//! value that follows a secret-looking key (see [`is_secret_key`]), with or
//! without `=` or `TO` between them:
//!
//! ```text
//!   'password' = 'x'     "s3.secret_access_key" 'x'     SET api_token TO 'x'
//! ```
//!
//! [`secret_literals`] returns the values (to scrub them from messages) and
//! [`mask_secrets`] the text with each replaced by `'***'` (for anything
//! that keeps the text: checkpoint metadata, the shell's history).

use crate::catalog::{REDACTED, is_secret_key};

/// A lexical piece of SQL text, as much as finding secrets needs.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    /// A quoted string or identifier: its quote, its value (quotes
    /// undoubled) and its byte range in the text, quotes included. An
    /// unterminated one runs to the end of its line.
    Quoted {
        quote: char,
        value: String,
        range: std::ops::Range<usize>,
    },
    /// A bare word (letters, digits, `_`, `.`).
    Word(&'a str),
    /// `=`.
    Eq,
    /// Anything else that is not whitespace or a comment.
    Other,
}

fn scan(text: &str) -> Vec<Piece<'_>> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = text[i..].find('\n').map_or(bytes.len(), |p| i + p + 1);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = text[i + 2..].find("*/").map_or(bytes.len(), |p| i + 2 + p + 2);
            }
            b'\'' | b'"' | b'`' => {
                let quote = c as char;
                let start = i;
                let mut value = String::new();
                let mut j = i + 1;
                while j < bytes.len() {
                    if bytes[j] == c {
                        if bytes.get(j + 1) == Some(&c) {
                            value.push(quote);
                            j += 2;
                            continue;
                        }
                        j += 1;
                        break;
                    }
                    if bytes[j] == b'\n' && !text[j..].contains(quote) {
                        // Unterminated: it holds at most the rest of its line.
                        break;
                    }
                    let ch = text[j..].chars().next().unwrap_or(' ');
                    value.push(ch);
                    j += ch.len_utf8();
                }
                out.push(Piece::Quoted {
                    quote,
                    value,
                    range: start..j,
                });
                i = j;
            }
            b'=' => {
                out.push(Piece::Eq);
                i += 1;
            }
            c if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' => {
                let end = bytes[i..]
                    .iter()
                    .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.'))
                    .map_or(bytes.len(), |p| i + p);
                out.push(Piece::Word(&text[i..end]));
                i = end;
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                let len = text[i..].chars().next().map_or(1, char::len_utf8);
                out.push(Piece::Other);
                i += len;
            }
        }
    }
    out
}

/// The quoted values that follow a secret-looking key, as
/// `(value, byte range of the quoted value)`.
fn secrets(text: &str) -> Vec<(String, std::ops::Range<usize>)> {
    let pieces = scan(text);
    let mut found = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        let key = match p {
            Piece::Quoted { value, quote, .. } if *quote != '`' || !value.is_empty() => value.as_str(),
            Piece::Word(w) => w,
            _ => continue,
        };
        if !is_secret_key(key) {
            continue;
        }
        let mut next = i + 1;
        if matches!(pieces.get(next), Some(Piece::Eq))
            || matches!(pieces.get(next), Some(Piece::Word(w)) if w.eq_ignore_ascii_case("to"))
        {
            next += 1;
        }
        if let Some(Piece::Quoted {
            quote: '\'' | '"',
            value,
            range,
        }) = pieces.get(next)
            && value != REDACTED
            && !value.is_empty()
        {
            found.push((value.clone(), range.clone()));
        }
    }
    found
}

/// The secret values in a text: each quoted value that follows a
/// secret-looking key, whether or not the text parses.
pub fn secret_literals(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (value, range) in secrets(text) {
        // As written too, quotes doubled: a parser quotes it back that way.
        let written = &text[range];
        let inner = written.get(1..).unwrap_or("");
        let inner = match (inner.chars().last(), written.chars().next()) {
            (Some(l), Some(f)) if l == f => &inner[..inner.len() - l.len_utf8()],
            _ => inner,
        };
        if inner != value && !inner.is_empty() {
            out.push(inner.to_string());
        }
        out.push(value);
    }
    out.dedup();
    out
}

/// Whether a text names a secret-looking key anywhere (quoted or not).
pub fn mentions_secret_key(text: &str) -> bool {
    scan(text).iter().any(|p| match p {
        Piece::Quoted { value, .. } => is_secret_key(value),
        Piece::Word(w) => is_secret_key(w),
        _ => false,
    })
}

/// The text with every secret value replaced by `'***'`; the rest is left
/// as written.
pub fn mask_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (_, range) in secrets(text) {
        out.push_str(&text[at..range.start]);
        out.push('\'');
        out.push_str(REDACTED);
        out.push('\'');
        at = range.end;
    }
    out.push_str(&text[at..]);
    out
}

/// `message` with each of `secrets` replaced by `***`.
pub fn scrub(message: &str, secrets: &[String]) -> String {
    let mut sorted: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    // Longest first, so a secret containing another is replaced whole.
    sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = message.to_string();
    for s in sorted {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), REDACTED);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_values_after_secret_keys_with_or_without_eq() {
        let t = "CREATE TABLE t WITH ('connector' = 'files', 's3.secret_access_key' 'SECRET123XYZ', \
                 \"password\" = \"p'w\", 'path' = 'x/')";
        assert_eq!(secret_literals(t), vec!["SECRET123XYZ", "p'w"]);
        assert_eq!(
            mask_secrets(t),
            "CREATE TABLE t WITH ('connector' = 'files', 's3.secret_access_key' '***', \
             \"password\" = '***', 'path' = 'x/')"
        );
        assert_eq!(
            secret_literals("SET 's3.session_token' TO 'abc''d'"),
            vec!["abc''d", "abc'd"],
            "as written, and as meant"
        );
        assert_eq!(secret_literals("SET api_token = 'tok-1'"), vec!["tok-1"]);
        assert!(secret_literals("SELECT 'password' FROM t WHERE x = 1").is_empty());
        assert!(secret_literals("-- 'password' = 'not code'\nSELECT 1").is_empty());
    }

    #[test]
    fn an_unterminated_secret_is_found_up_to_its_line_end() {
        let t = "CREATE TABLE t WITH ('password' = 'hunter2-long)\n;";
        assert_eq!(secret_literals(t), vec!["hunter2-long)"]);
        assert!(!mask_secrets(t).contains("hunter2"));
        assert!(mentions_secret_key(t));
        assert!(!mentions_secret_key("SELECT 1"));
    }

    #[test]
    fn scrub_replaces_longest_first() {
        let s = vec!["abcd".to_string(), "abcdefgh".to_string()];
        assert_eq!(scrub("x abcdefgh y abcd", &s), "x *** y ***");
    }
}
