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
//!
//! A credential may also be written into a URL, whatever the option
//! (`'path' = 's3://KEY:SECRET@host/bucket/'`, an endpoint, a proxy, a
//! broker list's `user:password@host:9092`): [`url_credentials`] finds
//! those user infos, which are secrets too (masked as `***`, so that
//! `s3://***@host/bucket/` still says where).

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

/// The pieces of `text`, each with its byte range.
fn scan(text: &str) -> Vec<(Piece<'_>, std::ops::Range<usize>)> {
    let bytes = text.as_bytes();
    let mut out: Vec<(Piece<'_>, std::ops::Range<usize>)> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        match c {
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = text[i..].find('\n').map_or(bytes.len(), |p| i + p + 1);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = text[i + 2..].find("*/").map_or(bytes.len(), |p| i + 2 + p + 2);
            }
            b'\'' | b'"' | b'`' => {
                let quote = c as char;
                // E'...' takes backslash escapes (`E'it\'s'`).
                let escapes = c == b'\''
                    && matches!(out.last(), Some((Piece::Word(w), r)) if r.end == i && w.eq_ignore_ascii_case("e"));
                let mut value = String::new();
                let mut j = i + 1;
                while j < bytes.len() {
                    if escapes && bytes[j] == b'\\' && j + 1 < bytes.len() {
                        let ch = text[j + 1..].chars().next().unwrap_or(' ');
                        value.push(ch);
                        j += 1 + ch.len_utf8();
                        continue;
                    }
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
                out.push((
                    Piece::Quoted {
                        quote,
                        value,
                        range: start..j,
                    },
                    start..j,
                ));
                i = j;
            }
            b'=' => {
                out.push((Piece::Eq, i..i + 1));
                i += 1;
            }
            c if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' => {
                let end = bytes[i..]
                    .iter()
                    .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.'))
                    .map_or(bytes.len(), |p| i + p);
                out.push((Piece::Word(&text[i..end]), i..end));
                i = end;
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                let len = text[i..].chars().next().map_or(1, char::len_utf8);
                out.push((Piece::Other, start..i + len));
                i += len;
            }
        }
    }
    out
}

/// Whether `c` ends the stretch of text a URL's user info can be in. A
/// password may hold almost anything (`;`, `,`, `(`, `'`, and `/` as AWS
/// secret keys do), so only whitespace and characters no URL holds end it.
fn ends_url(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '`' | '<' | '>')
}

/// The user info of the stretch `s` (a URL's text after `://`, or a
/// scheme-less word): up to its last `@`, when that `@` comes before the
/// first `/` (`user:password@host/...`) or what precedes it has a `:`
/// (`user:pa/ss@host/...`): not `bucket/me@home/` (an `@` in a path).
fn user_info(s: &str) -> Option<usize> {
    let at = s.rfind('@')?;
    let before = &s[..at];
    (at > 0 && (!before.contains('/') || before.contains(':'))).then_some(at)
}

/// The user infos written into URLs in `text`, as byte ranges: what comes
/// before the `@` of a URL (`scheme://user:password@host`), and, when
/// `lists` is set, of a scheme-less `user:password@host` word (a Kafka
/// broker list; the text a whole option value or a quoted string), which
/// must have a `:` before its `@` (an e-mail address has none).
pub fn url_credentials(text: &str, lists: bool) -> Vec<std::ops::Range<usize>> {
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    let stretch_end = |from: usize| text[from..].find(ends_url).map_or(text.len(), |p| from + p);
    let mut i = 0;
    while let Some(p) = text[i..].find("://") {
        let start = i + p + 3;
        let end = stretch_end(start);
        if let Some(at) = user_info(&text[start..end]) {
            out.push(start..start + at);
        }
        i = end.max(start);
    }
    if lists {
        // Words start at the text's start or after whitespace or a quote.
        let mut start = 0;
        loop {
            let end = stretch_end(start);
            let word = &text[start..end];
            if !word.contains("://")
                && let Some(at) = user_info(word)
                && word[..at].contains(':')
                && at + 1 < word.len()
            {
                out.push(start..start + at);
            }
            match text[end..].chars().next() {
                Some(c) => start = end + c.len_utf8(),
                None => break,
            }
        }
        out.sort_by_key(|r| r.start);
    }
    out
}

/// The user infos in `value`, a whole value (an option's, a quoted
/// string's, an environment variable's, a command-line argument's): as
/// [`url_credentials`] finds them, and also those with a space, `"`, `<`,
/// `>` or a backtick in their password, which end a URL in free text but
/// not here, since the value's own end is known: in a value that is a URL
/// (`scheme://user:pass word@host/...`, nothing before the scheme, no
/// space after the `@`), its user info runs to that `@`; with `lists`, a
/// scheme-less `user:pass word@host:port` piece of a comma-separated list
/// counts when its user and its host hold no space (`at 10:30 @home` is
/// not one).
pub fn value_credentials(value: &str, lists: bool) -> Vec<std::ops::Range<usize>> {
    let mut out = url_credentials(value, lists);
    let lead = value.len() - value.trim_start().len();
    let trimmed = value.trim();
    if let Some(p) = trimmed.find("://")
        && p > 0
        && trimmed[..p]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        let start = p + 3;
        if let Some(at) = user_info(&trimmed[start..])
            && !trimmed[start + at..].contains(char::is_whitespace)
        {
            out.push(lead + start..lead + start + at);
        }
    }
    if lists {
        let mut from = 0;
        for piece in value.split(',') {
            let lead = piece.len() - piece.trim_start().len();
            let word = piece.trim();
            if !word.contains("://")
                && let Some(at) = word.rfind('@')
                && let Some((user, _)) = word[..at].split_once(':')
                && !user.is_empty()
                && !user.contains(char::is_whitespace)
                && at + 1 < word.len()
                && !word[at + 1..].contains(char::is_whitespace)
            {
                out.push(from + lead..from + lead + at);
            }
            from += piece.len() + 1;
        }
    }
    // The longest of those that start together first: the masking below
    // skips a range that starts inside one already masked.
    out.sort_by_key(|r| (r.start, std::cmp::Reverse(r.end)));
    out.dedup();
    out
}

/// `value` (a whole value: see [`value_credentials`]) with every URL user
/// info in it replaced by `***`.
pub fn mask_value_credentials(value: &str, lists: bool) -> String {
    mask_ranges(value, value_credentials(value, lists))
}

/// The secrets written into URLs in `value` (a whole value: see
/// [`value_credentials`]), as [`url_secret_values`] gives them; a password
/// with a character that ends a URL in free text also gives its pieces
/// between such characters, since a message may print it cut there.
pub fn value_secret_values(value: &str, lists: bool) -> Vec<String> {
    let ranges = value_credentials(value, lists);
    let mut pieces = Vec::new();
    for r in &ranges {
        if let Some((_, password)) = value[r.clone()].split_once(':') {
            pieces.extend(
                password
                    .split(ends_url)
                    .filter(|p| p.len() >= 6 && p.len() < password.len())
                    .map(str::to_string),
            );
        }
    }
    let mut out = secret_values_of(value, ranges);
    out.extend(pieces);
    out.dedup();
    out
}

/// `text` with every URL user info in it (see [`url_credentials`])
/// replaced by `***`.
pub fn mask_url_credentials(text: &str, lists: bool) -> String {
    mask_ranges(text, url_credentials(text, lists))
}

fn mask_ranges(text: &str, ranges: Vec<std::ops::Range<usize>>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for r in ranges {
        if r.start < at {
            continue;
        }
        out.push_str(&text[at..r.start]);
        out.push_str(REDACTED);
        at = r.end;
    }
    out.push_str(&text[at..]);
    out
}

/// The secrets written into URLs in `text`, to scrub from messages: each
/// user info whole, and its password alone (a message may print the URL
/// with its user info taken apart).
pub fn url_secret_values(text: &str, lists: bool) -> Vec<String> {
    secret_values_of(text, url_credentials(text, lists))
}

fn secret_values_of(text: &str, ranges: Vec<std::ops::Range<usize>>) -> Vec<String> {
    let mut out = Vec::new();
    for r in ranges {
        let info = &text[r];
        out.push(info.to_string());
        if let Some((_, password)) = info.split_once(':')
            && !password.is_empty()
        {
            out.push(password.to_string());
        }
        // A broker list's parser cuts a password with a `,` in pieces,
        // and may quote a piece back.
        if info.contains(',') {
            out.extend(info.split(',').filter(|p| !p.is_empty()).map(str::to_string));
        }
    }
    out
}

/// The values that follow a secret-looking key, as `(value, byte range of
/// the value as written)`. A value is what a `WITH` or `SET` value may be
/// written as: a quoted string (`'x'`, `"x"`), one with a prefix
/// (`E'x'`, `N'x'`), a dollar-quoted one (`$$x$$`, `$tag$x$tag$`), or, after
/// `=` or `TO`, a bare word (`= hunter2`: up to the next space, `,`, `)`
/// or `;`), which the parser would take as a name and print back.
fn secrets(text: &str) -> Vec<(String, std::ops::Range<usize>)> {
    let pieces = scan(text);
    let mut found: Vec<(String, std::ops::Range<usize>)> = Vec::new();
    for (i, (p, at)) in pieces.iter().enumerate() {
        // Nothing inside a value found is a key (`$$a_secret_word$$`).
        if found.last().is_some_and(|(_, r)| at.start < r.end) {
            continue;
        }
        let key = match p {
            Piece::Quoted { value, quote, .. } if *quote != '`' || !value.is_empty() => value.as_str(),
            Piece::Word(w) => w,
            _ => continue,
        };
        if !is_secret_key(key) {
            continue;
        }
        let mut next = i + 1;
        let mut assigned = false;
        if matches!(pieces.get(next), Some((Piece::Eq, _)))
            || matches!(pieces.get(next), Some((Piece::Word(w), _)) if w.eq_ignore_ascii_case("to"))
        {
            next += 1;
            assigned = true;
        }
        if let Some(v) = value_at(text, &pieces, next, assigned)
            && v.0 != REDACTED
            && !v.0.is_empty()
        {
            found.push(v);
        }
    }
    found
}

/// The value written at piece `at` (see [`secrets`]): bare words only
/// when `assigned` (after `=` or `TO`).
fn value_at(
    text: &str,
    pieces: &[(Piece<'_>, std::ops::Range<usize>)],
    at: usize,
    assigned: bool,
) -> Option<(String, std::ops::Range<usize>)> {
    let (piece, range) = pieces.get(at)?;
    match piece {
        Piece::Quoted {
            quote: '\'' | '"',
            value,
            range,
        } => Some((value.clone(), range.clone())),
        // E'x', N'x', X'x', U&'x' is a word then a quote, touching.
        Piece::Word(w)
            if w.len() <= 2
                && matches!(pieces.get(at + 1), Some((Piece::Quoted { quote: '\'', .. }, r)) if r.start == range.end) =>
        {
            let Some((Piece::Quoted { value, range: q, .. }, _)) = pieces.get(at + 1) else {
                return None;
            };
            Some((value.clone(), range.start..q.end))
        }
        _ if text[range.start..].starts_with('$') => {
            // $tag$ ... $tag$ (the tag may be empty).
            let rest = &text[range.start + 1..];
            let tag_len = rest.find('$')?;
            let tag = &rest[..tag_len];
            if !tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return None;
            }
            let open = 2 + tag_len;
            let body = &text[range.start + open..];
            let close = format!("${tag}$");
            let (value, end) = match body.find(&close) {
                Some(p) => (&body[..p], range.start + open + p + close.len()),
                // Unterminated: the rest of its line.
                None => {
                    let line = body.find('\n').unwrap_or(body.len());
                    (&body[..line], range.start + open + line)
                }
            };
            Some((value.to_string(), range.start..end))
        }
        Piece::Word(_) | Piece::Other if assigned => {
            let len = text[range.start..]
                .find(|c: char| c.is_whitespace() || matches!(c, ',' | ')' | ';'))
                .unwrap_or(text.len() - range.start);
            (len > 0).then(|| {
                let end = range.start + len;
                (text[range.start..end].to_string(), range.start..end)
            })
        }
        _ => None,
    }
}

/// The secret values in a text: each quoted value that follows a
/// secret-looking key, whether or not the text parses.
pub fn secret_literals(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (value, range) in secrets(text) {
        // As written too (quotes doubled, escapes kept): a parser quotes
        // it back that way. A prefixed string (`E'x'`) or a bare or
        // dollar-quoted value, whole as well.
        let written = &text[range];
        let quoted_at = written
            .find(['\'', '"'])
            .filter(|&q| q <= 2 && !written.starts_with('$'));
        if quoted_at != Some(0) {
            out.push(written.to_string());
        }
        if let Some(q) = quoted_at {
            let quote = written[q..].chars().next().unwrap_or('\'');
            let inner = &written[q + 1..];
            let inner = inner.strip_suffix(quote).unwrap_or(inner);
            if inner != value && !inner.is_empty() {
                out.push(inner.to_string());
            }
        }
        out.push(value);
    }
    // Credentials in URLs, in any quoted value (a `WITH` option, a path
    // in a query).
    for (piece, _) in scan(text) {
        if let Piece::Quoted {
            quote: '\'' | '"',
            value,
            ..
        } = piece
        {
            out.extend(value_secret_values(&value, true));
        }
    }
    out.dedup();
    out
}

/// Whether a text names a secret-looking key anywhere (quoted or not).
pub fn mentions_secret_key(text: &str) -> bool {
    scan(text).iter().any(|(p, _)| match p {
        Piece::Quoted { value, .. } => is_secret_key(value),
        Piece::Word(w) => is_secret_key(w),
        _ => false,
    })
}

/// The text with every secret value replaced by `'***'`; the rest is left
/// as written.
pub fn mask_secrets(text: &str) -> String {
    // Each secret value's range and what it is replaced with: a secret
    // option's whole value, or a URL's user info inside a quoted string.
    let mut masks: Vec<(std::ops::Range<usize>, &str)> =
        secrets(text).into_iter().map(|(_, r)| (r, "'***'")).collect();
    for (piece, _) in scan(text) {
        if let Piece::Quoted {
            quote: quote @ ('\'' | '"'),
            range,
            ..
        } = piece
        {
            // As written, between the quotes (a doubled quote ends no
            // authority early: it is a separator either way). An
            // unterminated string runs to its end.
            let closed = range.len() >= 2 && text[range.clone()].ends_with(quote);
            let inner = range.start + 1..if closed { range.end - 1 } else { range.end };
            for r in value_credentials(&text[inner.clone()], true) {
                masks.push((inner.start + r.start..inner.start + r.end, REDACTED));
            }
        }
    }
    masks.sort_by_key(|(r, _)| r.start);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (range, with) in masks {
        if range.start < at {
            continue;
        }
        out.push_str(&text[at..range.start]);
        out.push_str(with);
        at = range.end;
    }
    out.push_str(&text[at..]);
    out
}

/// `message` with each of `secrets` replaced by `***`, and every URL's
/// user info too (a URL from the environment, or typed in a query).
pub fn scrub(message: &str, secrets: &[String]) -> String {
    scrub_known(&mask_url_credentials(message, false), secrets)
}

fn scrub_known(message: &str, secrets: &[String]) -> String {
    let mut sorted: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    // Longest first, so a secret containing another is replaced whole.
    sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = message.to_string();
    for s in sorted {
        if s.len() >= 4 {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), REDACTED);
            }
        } else {
            out = replace_whole(&out, s);
        }
    }
    out
}

/// `text` with each occurrence of a very short secret that stands alone
/// (not inside a word or number) replaced: replacing every `AB` would
/// turn `CREATE TABLE` into `CREATE T***LE` and show the secret's letters.
fn replace_whole(text: &str, secret: &str) -> String {
    let alone = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric() && c != '_');
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while let Some(p) = text[at..].find(secret) {
        let start = at + p;
        let end = start + secret.len();
        out.push_str(&text[at..start]);
        if alone(text[..start].chars().next_back()) && alone(text[end..].chars().next()) {
            out.push_str(REDACTED);
        } else {
            out.push_str(secret);
        }
        at = end;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Secret option names in Flink's spellings (`-` and `.` for `_`),
    /// misspelt, or Kafka's less common ones: their values are masked in
    /// the SQL kept in `metadata.json` (the job is refused for the unknown
    /// option only after that is written).
    #[test]
    fn secret_keys_in_other_spellings() {
        for key in [
            "s3.access-key",
            "s3.access-key-id",
            "s3.sse-customer-key-base64",
            "properties.sasl.pasword",
            "properties.ssl.keystore.key",
            "properties.sasl.oauthbearer.config",
            "S3.SECRET-ACCESS-KEY",
        ] {
            assert!(is_secret_key(key), "{key}");
            let t = format!("WITH ('{key}' = 'SECRETXYZ9')");
            assert_eq!(mask_secrets(&t), format!("WITH ('{key}' = '***')"), "{key}");
        }
        for key in [
            "key.fields",
            "path",
            "properties.bootstrap.servers",
            "PWD",
            "format",
        ] {
            assert!(!is_secret_key(key), "{key}");
        }
    }

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
    fn values_bare_prefixed_or_dollar_quoted_are_found() {
        let t = "CREATE TABLE o WITH ('connector'='files','s3.secret_access_key'=hunter2, 'password' = E'pw\\'x', \
                 'api_token' = $$tok en$$, 'sasl.password'=$k$two$k$) ";
        let found = secret_literals(t);
        for s in ["hunter2", "pw\\'x", "E'pw\\'x'", "tok en", "two"] {
            assert!(found.iter().any(|f| f == s), "{s} in {found:?}");
        }
        let masked = mask_secrets(t);
        for s in ["hunter2", "pw", "tok en", "$two"] {
            assert!(!masked.contains(s), "{masked}");
        }
        assert_eq!(
            masked,
            "CREATE TABLE o WITH ('connector'='files','s3.secret_access_key'='***', 'password' = '***', \
             'api_token' = '***', 'sasl.password'='***') "
        );
        let inner = "WITH ('password' = $$my_secret_pw$$, 'path' = 'x')";
        assert_eq!(mask_secrets(inner), "WITH ('password' = '***', 'path' = 'x')");
        // A bare word is a value only after `=` or `TO`.
        assert!(secret_literals("SELECT 'password' AND x").is_empty());
        assert_eq!(secret_literals("SET api_token TO abc;"), vec!["abc"]);
    }

    /// Any text at all (quotes, escapes and dollar quotes unbalanced,
    /// values inside values): scanning and masking never panic.
    #[test]
    fn any_text_is_scanned_without_panicking() {
        const TOKENS: [&str; 24] = [
            "'password'",
            "password",
            "=",
            " ",
            "TO",
            "E",
            "e'",
            "'",
            "\"",
            "$$",
            "$t$",
            "$",
            "x_secret",
            "\\",
            "'a\\'b'",
            ",",
            ")",
            ";",
            "--",
            "\n",
            "/*",
            "*/",
            "é",
            "hunter2",
        ];
        let mut seed: u64 = 7;
        for _ in 0..20_000 {
            let mut text = String::new();
            for _ in 0..(seed % 13) {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                text.push_str(TOKENS[(seed >> 33) as usize % TOKENS.len()]);
            }
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let _ = mask_secrets(&text);
            let _ = secret_literals(&text);
            let _ = mentions_secret_key(&text);
        }
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
        let s = vec!["abcd".to_string(), "abcdefgh".to_string(), "AB".to_string()];
        assert_eq!(
            scrub("x abcdefgh y abcd TABLE 'AB'", &s),
            "x *** y *** TABLE '***'"
        );
    }

    #[test]
    fn credentials_in_urls_are_found_masked_and_scrubbed() {
        let t = "CREATE TABLE s WITH ('connector' = 'files', 'path' = 's3://AKIAUSER:SuperSecretPW123@10.0.0.1:9000/b/in/', \
                 's3.endpoint' = 'http://admin:EndpointPass99@10.0.0.1:1', \
                 'properties.bootstrap.servers' = 'kuser:KafkaUrlPw9@h1:9092,h2:9092', 'format' = 'parquet')";
        let found = secret_literals(t);
        for s in [
            "AKIAUSER:SuperSecretPW123",
            "SuperSecretPW123",
            "admin:EndpointPass99",
            "EndpointPass99",
            "kuser:KafkaUrlPw9",
            "KafkaUrlPw9",
        ] {
            assert!(found.iter().any(|f| f == s), "{s} in {found:?}");
        }
        assert_eq!(
            mask_secrets(t),
            "CREATE TABLE s WITH ('connector' = 'files', 'path' = 's3://***@10.0.0.1:9000/b/in/', \
             's3.endpoint' = 'http://***@10.0.0.1:1', \
             'properties.bootstrap.servers' = '***@h1:9092,h2:9092', 'format' = 'parquet')"
        );
        // In any message: a URL's user info, whatever says it.
        assert_eq!(
            scrub(
                "cannot reach http://envuser:EnvPassWord55@127.0.0.1:1/x (s3://k:v@b/p)",
                &[]
            ),
            "cannot reach http://***@127.0.0.1:1/x (s3://***@b/p)"
        );
        // A password may hold what ends a host: `;`, `,`, `(`, `'`, `/`.
        for pw in [
            "pa;ss",
            "pa,ss",
            "pa(ss)",
            "pa''ss",
            "pa?ss",
            "pa#ss",
            "wJal/rXUtn+Fk",
        ] {
            let t = format!("'path' = 's3://AKIAQQ:{pw}@bkt/in/'");
            assert_eq!(mask_secrets(&t), "'path' = 's3://***@bkt/in/'", "{pw}");
            let message = format!("listing s3://AKIAQQ:{pw}@bkt/in/: the bucket does not exist");
            assert_eq!(
                scrub(&message, &[]),
                "listing s3://***@bkt/in/: the bucket does not exist"
            );
        }
        let found = secret_literals("'properties.bootstrap.servers' = 'ku:KP,Wzz63@127.0.0.1:1'");
        assert!(found.iter().any(|f| f == "ku:KP"), "{found:?}");
        // Not credentials: an e-mail address, an `@` past the host, a time.
        for plain in [
            "'path' = 's3://bucket/me@home/x/'",
            "WHERE email = 'joe@example.com'",
            "'a' = 'at 10:30 @home'",
            "file:///data/a@b/",
        ] {
            assert_eq!(mask_secrets(plain), plain);
            assert_eq!(scrub(plain, &[]), plain);
        }
        // A list's several user infos go with the hosts between them.
        assert_eq!(mask_url_credentials("u:p@h:1,v:q@k:2", true), "***@k:2");
        assert_eq!(mask_url_credentials("u:p@h:1", false), "u:p@h:1");
        // In a whole value, a password may hold a space, `"`, `<`, `>` or
        // a backtick (each ends a URL in free text).
        for pw in [
            "pa SECRETXYZ1",
            "pa\"SECRETXYZ1",
            "pa<SECRETXYZ1>",
            "pa`SECRETXYZ1",
        ] {
            let t = format!("'s3.endpoint' = 'http://admin:{pw}@127.0.0.1:1'");
            assert_eq!(
                mask_secrets(&t),
                "'s3.endpoint' = 'http://***@127.0.0.1:1'",
                "{pw}"
            );
            let found = secret_literals(&t);
            assert!(
                found.iter().any(|f| f == "SECRETXYZ1" || f == "SECRETXYZ1>"),
                "{pw}: {found:?}"
            );
        }
        assert_eq!(
            mask_secrets("'properties.bootstrap.servers' = 'ku:pa SECRETXYZ2@127.0.0.1:1, h:2'"),
            "'properties.bootstrap.servers' = '***@127.0.0.1:1, h:2'"
        );
        assert_eq!(mask_value_credentials("at 10:30 @home", true), "at 10:30 @home");
        // Only a value that is a URL runs to its last `@`: not a query, a
        // sentence or a JVM flag that holds one.
        for plain in [
            "SELECT * FROM 's3://b/x/' WHERE ts > '2024-01-01 10:00:00' AND email = 'a@b.com'",
            "Visit https://example.com at 10:30 or mail me@x.org",
            "-Durl=jdbc:postgresql://db:5432/x -Duser=watermark@b",
        ] {
            assert!(
                value_secret_values(plain, true).is_empty(),
                "{plain}: {:?}",
                value_secret_values(plain, true)
            );
            assert_eq!(mask_value_credentials(plain, true), plain);
        }
        // A list's piece with a space in its password, beside a URL.
        assert_eq!(
            mask_value_credentials("u:pa ss@h:1, http://x", true),
            "***@h:1, http://x"
        );
        assert_eq!(
            mask_value_credentials("s3://bucket/me@home/x/", true),
            "s3://bucket/me@home/x/"
        );
        // An unterminated string still has its credentials masked.
        assert_eq!(mask_secrets("'path' = 's3://a:b@h/x"), "'path' = 's3://***@h/x");
    }
}
