//! A token-level pass over a job's text, before `sqlparser` sees it.
//!
//! Streaming SQL has two forms `sqlparser` does not parse, both from Flink:
//!
//! * `WATERMARK FOR ts AS ts - INTERVAL '5' SECOND` inside `CREATE TABLE (...)`;
//! * window table functions, `TABLE(TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '10' SECOND))`,
//!   whose `TABLE t` and `DESCRIPTOR(c)` arguments are not expressions.
//!
//! This pass cuts the watermark clause out (returning it) and replaces each
//! window call with a placeholder table name `__weir_tvf_<n>` (returning the
//! call), so the rest of the statement parses as ordinary SQL. Working on
//! tokens, not characters, keeps it correct around quotes and comments.

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer, Whitespace};

use crate::{Error, Result};

/// The prefix of placeholder table names standing for window calls.
pub const TVF_PREFIX: &str = "__weir_tvf_";

/// When a streaming query emits its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Emit {
    /// `EMIT ON WINDOW CLOSE`: a window's rows once, when it is complete
    /// (the default for windowed aggregates).
    OnWindowClose,
    /// `EMIT ON UPDATE`: each epoch, the changed groups as a changelog (the
    /// default, and the only mode, for aggregates without a window).
    OnUpdate,
}

/// A window table function kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TvfKind {
    /// `TUMBLE(TABLE t, DESCRIPTOR(ts), size [, offset])`
    Tumble,
    /// `HOP(TABLE t, DESCRIPTOR(ts), slide, size [, offset])`
    Hop,
    /// `CUMULATE(TABLE t, DESCRIPTOR(ts), step, size [, offset])`
    Cumulate,
    /// `SESSION(TABLE t [PARTITION BY k], DESCRIPTOR(ts), gap)`
    Session,
}

impl TvfKind {
    fn from_name(name: &str) -> Option<TvfKind> {
        match name.to_ascii_uppercase().as_str() {
            "TUMBLE" => Some(TvfKind::Tumble),
            "HOP" => Some(TvfKind::Hop),
            "CUMULATE" => Some(TvfKind::Cumulate),
            "SESSION" => Some(TvfKind::Session),
            _ => None,
        }
    }

    /// The SQL name.
    pub fn name(self) -> &'static str {
        match self {
            TvfKind::Tumble => "TUMBLE",
            TvfKind::Hop => "HOP",
            TvfKind::Cumulate => "CUMULATE",
            TvfKind::Session => "SESSION",
        }
    }
}

/// A window table function call, as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TvfCall {
    /// Which function.
    pub kind: TvfKind,
    /// The placeholder name that replaced the call in the statement.
    pub placeholder: String,
    /// The table in `TABLE t`.
    pub table: String,
    /// `PARTITION BY` keys (SESSION).
    pub partition_by: Vec<String>,
    /// The column in `DESCRIPTOR(c)`.
    pub time_column: String,
    /// The remaining arguments (intervals), as SQL text.
    pub args: Vec<String>,
}

/// A `WATERMARK FOR col AS expr` clause, as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatermarkClause {
    /// The event-time column.
    pub column: String,
    /// The watermark expression, as SQL text.
    pub expr: String,
}

/// One statement of a job after the pass.
#[derive(Clone, Debug)]
pub struct Preprocessed {
    /// The statement as the user wrote it (for messages and metadata).
    pub original: String,
    /// The rewritten statement, for `sqlparser`.
    pub rewritten: String,
    /// The watermark clause cut out of a `CREATE TABLE`.
    pub watermark: Option<WatermarkClause>,
    /// Window calls replaced by placeholders.
    pub tvfs: Vec<TvfCall>,
    /// A trailing `EMIT ON WINDOW CLOSE` / `EMIT ON UPDATE`, cut out.
    pub emit: Option<Emit>,
    /// `t FOR SYSTEM_TIME AS OF attr` clauses (lookup joins), cut out.
    pub lookups: Vec<LookupClause>,
    /// `col TYPE METADATA [FROM 'key'] [VIRTUAL]` column clauses of a
    /// `CREATE TABLE`, cut out (the column stays, with its type).
    pub metadata: Vec<MetadataClause>,
}

/// A metadata column, in Flink's syntax: `ts TIMESTAMP(3) METADATA FROM
/// 'timestamp'`, `offset BIGINT METADATA VIRTUAL`. Its value comes from the
/// record's envelope (a Kafka record's partition, offset, timestamp, key,
/// headers), not from its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataClause {
    /// The column (normalized).
    pub column: String,
    /// The metadata key: the `FROM` string, else the column's name.
    pub key: String,
}

/// A `FOR SYSTEM_TIME AS OF attr` clause after a table name: Flink's
/// lookup join, `JOIN dim FOR SYSTEM_TIME AS OF o.proc_time AS d ON ...`.
/// The clause is cut out and the table read as a bounded table, whose
/// version at the epoch's processing time the join sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupClause {
    /// The table looked up (its last name part, normalized).
    pub table: String,
    /// The time attribute as written (`o.proc_time`, `PROCTIME()`).
    pub attribute: String,
    /// The attribute's column name (its last part), `None` for a call.
    pub column: Option<String>,
}

fn tokenize(sql: &str) -> Result<Vec<Token>> {
    Tokenizer::new(&GenericDialect {}, sql)
        // Strings keep their text as written (`'it''s'`): the tokens are rendered back
        // into the statement, and a string unescaped would come back unterminated.
        .with_unescape(false)
        .tokenize()
        .map_err(Error::syntax)
}

/// The most binary operators in a row one expression may have (see
/// [`check_operator_chains`]).
pub const MAX_OPERATOR_CHAIN: usize = 2_500;

/// Refuses a statement with an expression of more than
/// [`MAX_OPERATOR_CHAIN`] binary operators in a row (`1 + 1 + ...`,
/// `k = 0 OR k = 1 OR ...`). The parser turns such a chain into a tree as
/// deep as the chain is long, and planning walks it recursively: 10,000
/// terms overflowed the stack and aborted the process. (Nesting by
/// parentheses is capped by the parser itself.) Operators are counted
/// within one parenthesis level, between commas and clause keywords, so
/// the count is at least the depth the chain makes.
pub fn check_operator_chains(tokens: &[Token]) -> Result<()> {
    use datafusion::sql::sqlparser::keywords::Keyword;
    let mut levels: Vec<usize> = vec![0];
    let mut longest = 0;
    for t in tokens {
        let counts = match t {
            Token::LParen => {
                levels.push(0);
                false
            }
            Token::RParen => {
                levels.pop();
                if levels.is_empty() {
                    levels.push(0);
                }
                false
            }
            Token::Comma => {
                if let Some(n) = levels.last_mut() {
                    *n = 0;
                }
                false
            }
            Token::Word(w) => match w.keyword {
                Keyword::AND | Keyword::OR | Keyword::LIKE | Keyword::ILIKE | Keyword::IS => true,
                Keyword::SELECT
                | Keyword::FROM
                | Keyword::WHERE
                | Keyword::GROUP
                | Keyword::HAVING
                | Keyword::ORDER
                | Keyword::ON
                | Keyword::WHEN
                | Keyword::THEN
                | Keyword::ELSE
                | Keyword::JOIN
                | Keyword::UNION
                | Keyword::LIMIT => {
                    if let Some(n) = levels.last_mut() {
                        *n = 0;
                    }
                    false
                }
                _ => false,
            },
            Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::Mod
            | Token::StringConcat
            | Token::Eq
            | Token::DoubleEq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
            | Token::Spaceship
            | Token::Ampersand
            | Token::Pipe
            | Token::Caret
            | Token::ShiftLeft
            | Token::ShiftRight
            | Token::DoubleColon => true,
            _ => false,
        };
        if counts && let Some(n) = levels.last_mut() {
            *n += 1;
            longest = longest.max(*n);
        }
    }
    if longest > MAX_OPERATOR_CHAIN {
        // A limit of any query, batch or streaming: not "on a stream".
        return Err(Error::Plan(format!(
            "an expression of {longest} operators in a row is more than Weir plans (at most {MAX_OPERATOR_CHAIN}); \
             for many values of one column write `k IN (...)`, or join with a table of them"
        )));
    }
    Ok(())
}

/// Refuses `TABLESAMPLE`: DataFusion's planner ignores it, so every row
/// would be read and the answer would not be the sample asked for.
pub fn check_sampling(tokens: &[Token]) -> Result<()> {
    if tokens
        .iter()
        .any(|t| matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("TABLESAMPLE")))
    {
        return Err(Error::Plan(
            "TABLESAMPLE is not supported: it would be ignored and every row read".into(),
        ));
    }
    Ok(())
}

fn render(tokens: &[Token]) -> String {
    tokens
        .iter()
        .map(|t| match t {
            // The tokenizer unescapes an escape string (`E'it\'s'` holds
            // `it's`), and its Display writes the text back as it is: the
            // quote would then end the string. Escape it again.
            Token::EscapedStringLiteral(s) => format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
            t => t.to_string(),
        })
        .collect()
}

fn is_trivia(t: &Token) -> bool {
    matches!(t, Token::Whitespace(_))
}

fn is_word(t: &Token, upper: &str) -> bool {
    matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(upper))
}

/// One statement of a job's text, and where it starts in the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatementText {
    /// The statement without its `;`, trimmed (leading comments kept).
    pub text: String,
    /// The line (from 1) of its first character in the job's text.
    pub line: u64,
    /// The column (from 1) of its first character.
    pub column: u64,
}

/// Splits a job's text into statements at top-level semicolons, dropping
/// empty ones (only whitespace and comments).
pub fn split_statements(text: &str) -> Result<Vec<StatementText>> {
    let tokens = Tokenizer::new(&GenericDialect {}, text)
        .with_unescape(false)
        .tokenize_with_location()
        .map_err(Error::syntax)?;
    let mut out = Vec::new();
    let mut current: Vec<Token> = Vec::new();
    let mut start: Option<(u64, u64)> = None;
    for t in tokens {
        if t.token == Token::SemiColon {
            push_statement(&mut out, &mut current, start.take());
            continue;
        }
        // A statement starts at its first token: comments before it are
        // not part of it.
        if start.is_none() && !is_trivia(&t.token) {
            start = Some((t.span.start.line, t.span.start.column));
        }
        if start.is_some() {
            current.push(t.token);
        }
    }
    push_statement(&mut out, &mut current, start);
    Ok(out)
}

fn push_statement(out: &mut Vec<StatementText>, current: &mut Vec<Token>, start: Option<(u64, u64)>) {
    let tokens = std::mem::take(current);
    if let Some((line, column)) = start
        && tokens.iter().any(|t| !is_trivia(t))
    {
        out.push(StatementText {
            text: render(&tokens).trim_end().to_string(),
            line,
            column,
        });
    }
}

/// Whitespace with the shape of `text`: as many lines, and the last line as
/// long (in characters), so that what follows keeps its line and column.
fn blank_like(text: &str, already: usize) -> Vec<Token> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.split('\n').collect();
    let first = lines[0].chars().count().saturating_sub(already);
    out.extend(std::iter::repeat_n(Token::Whitespace(Whitespace::Space), first));
    for l in &lines[1..] {
        out.push(Token::Whitespace(Whitespace::Newline));
        out.extend(std::iter::repeat_n(
            Token::Whitespace(Whitespace::Space),
            l.chars().count(),
        ));
    }
    out
}

/// Rewrites "at Line: L, Column: C" in a parser message about a statement
/// that starts at `line`, `column` of a job's text into a position in the
/// job's text.
pub fn relocate(message: &str, line: u64, column: u64) -> String {
    const AT: &str = "Line: ";
    let Some(i) = message.find(AT) else {
        return message.to_string();
    };
    let rest = &message[i + AT.len()..];
    let digits = |s: &str| s.chars().take_while(char::is_ascii_digit).collect::<String>();
    let l = digits(rest);
    let Some(after) = rest[l.len()..].strip_prefix(", Column: ") else {
        return message.to_string();
    };
    let c = digits(after);
    let (Ok(l), Ok(c)) = (l.parse::<u64>(), c.parse::<u64>()) else {
        return message.to_string();
    };
    let file_line = line + l - 1;
    let file_col = if l == 1 { column + c - 1 } else { c };
    let tail = &after[c.to_string().len()..];
    let head = message[..i]
        .trim_end_matches(' ')
        .trim_end_matches("at")
        .trim_end();
    format!("{head} at line {file_line}, column {file_col}{tail}")
}

/// Rewrites one statement; `next_tvf` numbers placeholders across the job.
pub fn preprocess(statement: &str, next_tvf: &mut usize) -> Result<Preprocessed> {
    let mut tokens = tokenize(statement)?;
    check_operator_chains(&tokens)?;
    check_sampling(&tokens)?;
    let watermark = cut_watermark(&mut tokens)?;
    let emit = cut_emit(&mut tokens)?;
    let tvfs = replace_tvfs(&mut tokens, next_tvf)?;
    let lookups = cut_system_time(&mut tokens)?;
    let metadata = cut_metadata(&mut tokens)?;
    Ok(Preprocessed {
        original: statement.to_string(),
        rewritten: render(&tokens),
        watermark,
        tvfs,
        emit,
        lookups,
        metadata,
    })
}

/// Cuts each column's `METADATA [FROM 'key'] [VIRTUAL]` out of a `CREATE
/// TABLE`'s column list (sqlparser does not know the clause), leaving the
/// column and its type.
fn cut_metadata(tokens: &mut Vec<Token>) -> Result<Vec<MetadataClause>> {
    let first = next_significant(tokens, 0);
    let second = first.and_then(|i| next_significant(tokens, i + 1));
    let is_create_table = matches!((first, second), (Some(a), Some(b))
        if is_word(&tokens[a], "CREATE") && is_word(&tokens[b], "TABLE"));
    if !is_create_table {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut depth = 0usize;
    // The first token of the current column definition.
    let mut column_start: Option<usize> = None;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::LParen => {
                depth += 1;
                if depth == 1 {
                    column_start = next_significant(tokens, i + 1);
                }
            }
            Token::RParen => {
                depth = depth.saturating_sub(1);
                if depth == 0 && column_start.is_some() {
                    // The column list ended: the rest is WITH (...).
                    break;
                }
            }
            Token::Comma if depth == 1 => column_start = next_significant(tokens, i + 1),
            t if depth == 1 && is_word(t, "METADATA") => {
                let column = column_start
                    .and_then(|c| match &tokens[c] {
                        Token::Word(w) => Some(normalize_ident(&w.value, w.quote_style.is_some())),
                        _ => None,
                    })
                    .ok_or_else(|| Error::Syntax("METADATA must follow a column's name and type".into()))?;
                let mut end = i + 1;
                let mut key = column.clone();
                if let Some(f) = next_significant(tokens, end).filter(|&f| is_word(&tokens[f], "FROM")) {
                    let k = next_significant(tokens, f + 1);
                    match k.map(|k| &tokens[k]) {
                        Some(Token::SingleQuotedString(s)) => {
                            // As written: `''` is one quote.
                            key = s.replace("''", "'");
                            end = k.map_or(end, |k| k + 1);
                        }
                        _ => {
                            return Err(Error::Syntax(format!(
                                "column '{column}': METADATA FROM needs a quoted key, e.g. METADATA FROM 'timestamp'"
                            )));
                        }
                    }
                }
                if let Some(v) = next_significant(tokens, end).filter(|&v| is_word(&tokens[v], "VIRTUAL")) {
                    end = v + 1;
                }
                match next_significant(tokens, end).map(|n| &tokens[n]) {
                    Some(Token::Comma) | Some(Token::RParen) => {}
                    other => {
                        return Err(Error::Syntax(format!(
                            "column '{column}': unexpected '{}' after METADATA",
                            other.map(ToString::to_string).unwrap_or_default()
                        )));
                    }
                }
                // Blanked in the shape of the cut, so that parser messages
                // keep their line and column.
                let blank = blank_like(&render(&tokens[i..end]), 0);
                let len = blank.len();
                tokens.splice(i..end, blank);
                out.push(MetadataClause { column, key });
                i += len;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(out)
}

/// Cuts each `FOR SYSTEM_TIME AS OF attr` (after a table name) out of the
/// statement. `attr` is a column (`o.proc_time`) or a call (`PROCTIME()`).
fn cut_system_time(tokens: &mut Vec<Token>) -> Result<Vec<LookupClause>> {
    let mut out = Vec::new();
    loop {
        let sig: Vec<usize> = (0..tokens.len()).filter(|&i| !is_trivia(&tokens[i])).collect();
        let at = (0..sig.len()).find(|&k| {
            k + 3 < sig.len()
                && is_word(&tokens[sig[k]], "FOR")
                && is_word(&tokens[sig[k + 1]], "SYSTEM_TIME")
                && is_word(&tokens[sig[k + 2]], "AS")
                && is_word(&tokens[sig[k + 3]], "OF")
        });
        let Some(k) = at else { break };
        let table = match k.checked_sub(1).map(|p| &tokens[sig[p]]) {
            Some(t @ Token::Word(_)) if !is_word(t, "JOIN") && !is_word(t, "FROM") => ident_of(t),
            _ => None,
        }
        .ok_or_else(|| {
            Error::Syntax(
                "FOR SYSTEM_TIME AS OF must follow a table name (JOIN t FOR SYSTEM_TIME AS OF ...)".into(),
            )
        })?;
        // The attribute: a dotted name, perhaps called.
        let bad = || {
            Error::Syntax(format!(
                "FOR SYSTEM_TIME AS OF after '{table}' takes a processing-time attribute: a column defined as                  PROCTIME() (FOR SYSTEM_TIME AS OF o.proc_time), or PROCTIME()"
            ))
        };
        let mut e = k + 4;
        let mut parts = vec![ident_of(sig.get(e).map(|&i| &tokens[i]).ok_or_else(bad)?).ok_or_else(bad)?];
        while e + 2 < sig.len() && tokens[sig[e + 1]] == Token::Period {
            parts.push(ident_of(&tokens[sig[e + 2]]).ok_or_else(bad)?);
            e += 2;
        }
        let mut end = sig[e] + 1;
        let mut column = parts.last().cloned();
        if e + 1 < sig.len() && tokens[sig[e + 1]] == Token::LParen {
            let close = matching_paren(tokens, sig[e + 1]).ok_or_else(bad)?;
            end = close + 1;
            column = None;
        }
        let attribute = render(&tokens[sig[k + 4]..end]);
        tokens.splice(sig[k]..end, [Token::Whitespace(Whitespace::Space)]);
        out.push(LookupClause {
            table,
            attribute,
            column,
        });
    }
    Ok(out)
}

/// Cuts a trailing `EMIT ON WINDOW CLOSE` or `EMIT ON UPDATE` (the forms
/// RisingWave and Arroyo users write), outside any parentheses.
fn cut_emit(tokens: &mut Vec<Token>) -> Result<Option<Emit>> {
    let sig: Vec<usize> = (0..tokens.len()).filter(|&i| !is_trivia(&tokens[i])).collect();
    let Some(pos) = sig.iter().rposition(|&i| is_word(&tokens[i], "EMIT")) else {
        return Ok(None);
    };
    let depth: i64 = tokens[..sig[pos]]
        .iter()
        .map(|t| match t {
            Token::LParen => 1,
            Token::RParen => -1,
            _ => 0,
        })
        .sum();
    if depth != 0 {
        return Ok(None);
    }
    let rest: Vec<String> = sig[pos + 1..]
        .iter()
        .map(|&i| tokens[i].to_string().to_ascii_uppercase())
        .collect();
    let emit = match rest.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["ON", "WINDOW", "CLOSE"] => Emit::OnWindowClose,
        ["ON", "UPDATE"] => Emit::OnUpdate,
        _ => {
            return Err(Error::Syntax(format!(
                "expected EMIT ON WINDOW CLOSE or EMIT ON UPDATE at the end of the statement, got EMIT {}",
                rest.join(" ")
            )));
        }
    };
    tokens.truncate(sig[pos]);
    Ok(Some(emit))
}

/// Index of the next non-trivia token at or after `i`.
fn next_significant(tokens: &[Token], mut i: usize) -> Option<usize> {
    while i < tokens.len() {
        if !is_trivia(&tokens[i]) {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Index of the parenthesis closing the one at `open`.
fn matching_paren(tokens: &[Token], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn cut_watermark(tokens: &mut Vec<Token>) -> Result<Option<WatermarkClause>> {
    let first = next_significant(tokens, 0);
    let second = first.and_then(|i| next_significant(tokens, i + 1));
    let is_create_table = matches!((first, second), (Some(a), Some(b))
        if is_word(&tokens[a], "CREATE") && is_word(&tokens[b], "TABLE"));
    if !is_create_table {
        return Ok(None);
    }
    let mut depth = 0usize;
    let mut last_comma: Option<usize> = None;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::Comma if depth == 1 => last_comma = Some(i),
            t if depth == 1 && is_word(t, "WATERMARK") => {
                let for_kw = next_significant(tokens, i + 1);
                if !matches!(for_kw, Some(f) if is_word(&tokens[f], "FOR")) {
                    i += 1;
                    continue;
                }
                let col_i = next_significant(tokens, for_kw.unwrap_or(i) + 1)
                    .ok_or_else(|| Error::Syntax("WATERMARK FOR needs a column".into()))?;
                let Token::Word(col) = &tokens[col_i] else {
                    return Err(Error::Syntax(format!(
                        "WATERMARK FOR needs a column name, found '{}'",
                        tokens[col_i]
                    )));
                };
                let column = normalize_ident(&col.value, col.quote_style.is_some());
                let as_i = next_significant(tokens, col_i + 1)
                    .filter(|&a| is_word(&tokens[a], "AS"))
                    .ok_or_else(|| Error::Syntax(format!("expected AS after WATERMARK FOR {column}")))?;
                // The expression runs to the next comma at this depth or the
                // parenthesis closing the column list.
                let mut end = as_i + 1;
                let mut d = 0usize;
                while end < tokens.len() {
                    match &tokens[end] {
                        Token::LParen => d += 1,
                        Token::RParen if d == 0 => break,
                        Token::RParen => d -= 1,
                        Token::Comma if d == 0 => break,
                        _ => {}
                    }
                    end += 1;
                }
                let expr = render(&tokens[as_i + 1..end]).trim().to_string();
                if expr.is_empty() {
                    return Err(Error::Syntax(format!(
                        "WATERMARK FOR {column} AS needs an expression, e.g. {column} - INTERVAL '5' SECOND"
                    )));
                }
                // Cut from the comma before the clause (or the clause itself
                // when it comes first) to the end of the expression.
                let start = last_comma.unwrap_or(i);
                let cut_end = if last_comma.is_none() && tokens.get(end) == Some(&Token::Comma) {
                    end + 1
                } else {
                    end
                };
                let cut = render(&tokens[start..cut_end]);
                tokens.splice(start..cut_end, blank_like(&cut, 0));
                return Ok(Some(WatermarkClause { column, expr }));
            }
            _ => {}
        }
        i += 1;
    }
    Ok(None)
}

/// SQL identifier normalization as DataFusion does it: unquoted names are
/// lower-cased.
pub fn normalize_ident(value: &str, quoted: bool) -> String {
    if quoted {
        value.to_string()
    } else {
        value.to_ascii_lowercase()
    }
}

fn replace_tvfs(tokens: &mut Vec<Token>, next_tvf: &mut usize) -> Result<Vec<TvfCall>> {
    let mut calls = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        // `TABLE ( KIND ( ... ) )` or a bare `KIND ( TABLE ... )`.
        let (start, kind_i, end) = if is_word(&tokens[i], "TABLE") {
            let Some(open) = next_significant(tokens, i + 1).filter(|&o| tokens[o] == Token::LParen) else {
                i += 1;
                continue;
            };
            let Some(k) = next_significant(tokens, open + 1) else {
                i += 1;
                continue;
            };
            let is_kind = matches!(&tokens[k], Token::Word(w) if TvfKind::from_name(&w.value).is_some());
            if !is_kind {
                i += 1;
                continue;
            }
            let close = matching_paren(tokens, open)
                .ok_or_else(|| Error::Syntax("unbalanced parentheses in a window table function".into()))?;
            (i, k, close)
        } else if matches!(&tokens[i], Token::Word(w) if TvfKind::from_name(&w.value).is_some()) {
            let open = next_significant(tokens, i + 1).filter(|&o| tokens[o] == Token::LParen);
            let table_kw = open.and_then(|o| next_significant(tokens, o + 1));
            match (open, table_kw) {
                (Some(o), Some(t)) if is_word(&tokens[t], "TABLE") => {
                    let close = matching_paren(tokens, o).ok_or_else(|| {
                        Error::Syntax("unbalanced parentheses in a window table function".into())
                    })?;
                    (i, i, close)
                }
                _ => {
                    i += 1;
                    continue;
                }
            }
        } else {
            i += 1;
            continue;
        };
        let kind = match &tokens[kind_i] {
            Token::Word(w) => TvfKind::from_name(&w.value),
            _ => None,
        }
        .ok_or_else(|| Error::internal(format!("the window call at token {kind_i} lost its name")))?;
        let open = next_significant(tokens, kind_i + 1)
            .filter(|&o| tokens[o] == Token::LParen)
            .ok_or_else(|| Error::Syntax(format!("expected '(' after {}", kind.name())))?;
        let close = matching_paren(tokens, open)
            .ok_or_else(|| Error::Syntax(format!("unbalanced parentheses in {}(...)", kind.name())))?;
        let placeholder = format!("{TVF_PREFIX}{}", *next_tvf);
        *next_tvf += 1;
        let call = parse_tvf_args(kind, &tokens[open + 1..close], placeholder.clone())?;
        // The placeholder, padded to the call's shape so that positions in
        // parser errors after it still point into the text as written.
        let cut = render(&tokens[start..=end]);
        let mut replacement = vec![Token::make_word(&placeholder, None)];
        replacement.extend(blank_like(&cut, placeholder.chars().count()));
        tokens.splice(start..=end, replacement);
        calls.push(call);
        i = start + 1;
    }
    Ok(calls)
}

/// Splits at commas outside parentheses.
fn split_args(tokens: &[Token]) -> Vec<Vec<Token>> {
    let mut args = vec![Vec::new()];
    let mut depth = 0usize;
    for t in tokens {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::Comma if depth == 0 => {
                args.push(Vec::new());
                continue;
            }
            _ => {}
        }
        if let Some(arg) = args.last_mut() {
            arg.push(t.clone());
        }
    }
    args
}

fn significant(tokens: &[Token]) -> Vec<&Token> {
    tokens.iter().filter(|t| !is_trivia(t)).collect()
}

fn ident_of(t: &Token) -> Option<String> {
    match t {
        Token::Word(w) => Some(normalize_ident(&w.value, w.quote_style.is_some())),
        _ => None,
    }
}

fn parse_tvf_args(kind: TvfKind, inner: &[Token], placeholder: String) -> Result<TvfCall> {
    let name = kind.name();
    let usage = match kind {
        TvfKind::Tumble => "TUMBLE(TABLE t, DESCRIPTOR(ts), size [, offset])",
        TvfKind::Hop => "HOP(TABLE t, DESCRIPTOR(ts), slide, size [, offset])",
        TvfKind::Cumulate => "CUMULATE(TABLE t, DESCRIPTOR(ts), step, size [, offset])",
        TvfKind::Session => "SESSION(TABLE t [PARTITION BY keys], DESCRIPTOR(ts), gap)",
    };
    let bad = |what: String| Error::Syntax(format!("{name}: {what}; expected {usage}"));
    let mut args = split_args(inner).into_iter();

    // TABLE t [PARTITION BY k1 [, k2 ...] | PARTITION BY (k1, k2)]
    let first = args.next().unwrap_or_default();
    let first_sig = significant(&first);
    if first_sig.len() < 2 || !is_word(first_sig[0], "TABLE") {
        return Err(bad("the first argument must be TABLE <name>".into()));
    }
    let mut table = ident_of(first_sig[1]).ok_or_else(|| bad("TABLE needs a table name".into()))?;
    let mut rest = &first_sig[2..];
    // Qualified names (schema.table) keep only the last part, as sources
    // live in one namespace.
    while rest.len() >= 2 && *rest[0] == Token::Period {
        table = ident_of(rest[1]).ok_or_else(|| bad("bad table name".into()))?;
        rest = &rest[2..];
    }
    let mut partition_by = Vec::new();
    let mut pending: Vec<Vec<Token>> = args.collect();
    if !rest.is_empty() {
        if rest.len() < 3 || !is_word(rest[0], "PARTITION") || !is_word(rest[1], "BY") {
            return Err(bad(format!(
                "unexpected '{}' after TABLE {table}",
                rest.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" ")
            )));
        }
        let keys: Vec<&Token> = rest[2..]
            .iter()
            .copied()
            .filter(|t| !matches!(t, Token::LParen | Token::RParen | Token::Comma))
            .collect();
        for k in keys {
            partition_by.push(ident_of(k).ok_or_else(|| bad("bad PARTITION BY key".into()))?);
        }
        // Unparenthesized keys continue in the following arguments until DESCRIPTOR.
        while let Some(next) = pending.first() {
            let sig = significant(next);
            if sig.first().is_some_and(|t| is_word(t, "DESCRIPTOR")) {
                break;
            }
            if sig.len() != 1 {
                break;
            }
            partition_by.push(ident_of(sig[0]).ok_or_else(|| bad("bad PARTITION BY key".into()))?);
            pending.remove(0);
        }
    }
    let mut pending = pending.into_iter();

    // DESCRIPTOR(col)
    let desc = pending
        .next()
        .ok_or_else(|| bad("missing DESCRIPTOR(time column)".into()))?;
    let d = significant(&desc);
    let time_column = match d.as_slice() {
        [kw, Token::LParen, col, Token::RParen] if is_word(kw, "DESCRIPTOR") => {
            ident_of(col).ok_or_else(|| bad("DESCRIPTOR needs a column name".into()))?
        }
        _ => return Err(bad("the second argument must be DESCRIPTOR(<time column>)".into())),
    };

    let args: Vec<String> = pending.map(|a| render(&a).trim().to_string()).collect();
    if args.iter().any(|a| a.contains("=>")) {
        return Err(bad(
            "named arguments are not supported; pass them by position".into()
        ));
    }
    let (min, max) = match kind {
        TvfKind::Tumble => (1, 2),
        TvfKind::Hop | TvfKind::Cumulate => (2, 3),
        TvfKind::Session => (1, 1),
    };
    if args.len() < min || args.len() > max || args.iter().any(String::is_empty) {
        return Err(bad(format!("got {} interval argument(s)", args.len())));
    }
    if kind != TvfKind::Session && !partition_by.is_empty() {
        return Err(bad("only SESSION takes PARTITION BY".into()));
    }
    Ok(TvfCall {
        kind,
        placeholder,
        table,
        partition_by,
        time_column,
        args,
    })
}

/// `text` without placeholder names: `__weir_tvf_3.price` becomes `price`,
/// and a bare `__weir_tvf_3` the window call it stands for.
pub fn hide_placeholders(text: &str, calls: &std::collections::BTreeMap<String, TvfCall>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(TVF_PREFIX) {
        out.push_str(&rest[..at]);
        let after = &rest[at + TVF_PREFIX.len()..];
        let digits = after.chars().take_while(char::is_ascii_digit).count();
        let name = &rest[at..at + TVF_PREFIX.len() + digits];
        let tail = &after[digits..];
        if let Some(t) = tail.strip_prefix('.') {
            rest = t;
        } else {
            match calls.get(name) {
                Some(c) => out.push_str(&format!(
                    "{}(TABLE {}, DESCRIPTOR({}), ...)",
                    c.kind.name(),
                    c.table,
                    c.time_column
                )),
                None => out.push_str("the window call"),
            }
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// Whether a token is a comment (for callers that normalize text).
pub fn is_comment(t: &Token) -> bool {
    matches!(
        t,
        Token::Whitespace(Whitespace::SingleLineComment { .. } | Whitespace::MultiLineComment(_))
    )
}

/// The tokens of a text (for callers that normalize or redact it).
pub fn tokens(text: &str) -> Result<Vec<Token>> {
    tokenize(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_statements_outside_quotes_and_comments() {
        let s = split_statements(
            "CREATE TABLE a (x INT); -- a comment; still a comment\n\
             SELECT ';' FROM a ;  ;\n/* ; */",
        )
        .unwrap();
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[1].text, "SELECT ';' FROM a", "{s:?}");
        assert_eq!((s[0].line, s[0].column), (1, 1));
        assert_eq!((s[1].line, s[1].column), (2, 1));
        let s = split_statements("SELECT 1;  SELECT\n  2;\n\n  -- why\n  SELECT 3").unwrap();
        assert_eq!(
            s.iter().map(|s| (s.line, s.column)).collect::<Vec<_>>(),
            vec![(1, 1), (1, 12), (5, 3)]
        );
        assert_eq!(s[2].text, "SELECT 3");
        // An escape string keeps its escapes: the statement parses again.
        let s = split_statements(r"SELECT E'it\'s; a \\ b' AS x; SELECT 2").unwrap();
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[0].text, r"SELECT E'it\'s; a \\ b' AS x");
        assert!(
            datafusion::sql::sqlparser::parser::Parser::parse_sql(&GenericDialect {}, &s[0].text).is_ok(),
            "{s:?}"
        );
    }

    /// A quote written twice inside a string (`'it''s'`) survives the
    /// split and the rewrite: the strings were unescaped and rendered back
    /// unterminated.
    #[test]
    fn a_doubled_quote_stays_one_string() {
        let s = split_statements("SELECT 'it''s'; SELECT 'a;''b'").unwrap();
        assert_eq!(s[0].text, "SELECT 'it''s'");
        assert_eq!(s[1].text, "SELECT 'a;''b'");
        let mut n = 0;
        let p = preprocess(
            "CREATE TABLE t (ts TIMESTAMP(3) METADATA FROM 'o''k', WATERMARK FOR ts AS ts) \
             WITH ('path' = 'we''ird/')",
            &mut n,
        )
        .unwrap();
        assert!(p.rewritten.contains("'we''ird/'"), "{}", p.rewritten);
        assert_eq!(p.metadata[0].key, "o'k");
        assert!(
            datafusion::sql::sqlparser::parser::Parser::parse_sql(&GenericDialect {}, &p.rewritten).is_ok()
        );
    }

    #[test]
    fn cuts_metadata_clauses() {
        let mut n = 0;
        let p = preprocess(
            "CREATE TABLE k (v BIGINT, ts TIMESTAMP(3) METADATA FROM 'timestamp',\n  \
             \"offset\" BIGINT METADATA VIRTUAL, partition INT METADATA,\n  \
             WATERMARK FOR ts AS ts) WITH ('connector' = 'kafka')",
            &mut n,
        )
        .unwrap();
        assert_eq!(
            p.metadata,
            vec![
                MetadataClause {
                    column: "ts".into(),
                    key: "timestamp".into()
                },
                MetadataClause {
                    column: "offset".into(),
                    key: "offset".into()
                },
                MetadataClause {
                    column: "partition".into(),
                    key: "partition".into()
                },
            ]
        );
        assert!(!p.rewritten.contains("METADATA"), "{}", p.rewritten);
        assert!(!p.rewritten.contains("VIRTUAL"), "{}", p.rewritten);
        assert_eq!(p.rewritten.lines().count(), 3, "lines are kept");
        // Only in a CREATE TABLE's column list.
        let q = preprocess("SELECT metadata FROM t", &mut n).unwrap();
        assert!(q.metadata.is_empty());
        let e = preprocess(
            "CREATE TABLE k (v BIGINT METADATA FROM ts) WITH ('a'='b')",
            &mut n,
        )
        .unwrap_err();
        assert!(e.to_string().contains("needs a quoted key"), "{e}");
    }

    #[test]
    fn cuts_the_watermark_clause() {
        let mut n = 0;
        let p = preprocess(
            "CREATE TABLE bids (auction BIGINT, date_time TIMESTAMP(3),\n  \
             WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND\n) WITH ('connector' = 'files')",
            &mut n,
        )
        .unwrap();
        let w = p.watermark.unwrap();
        assert_eq!(w.column, "date_time");
        assert_eq!(w.expr, "date_time - INTERVAL '5' SECOND");
        assert!(!p.rewritten.contains("WATERMARK"), "{}", p.rewritten);
        assert!(
            squash(&p.rewritten).contains("TIMESTAMP(3) ) WITH"),
            "{}",
            p.rewritten
        );
        assert_eq!(p.rewritten.lines().count(), 3, "lines are kept");

        let p = preprocess(
            "CREATE TABLE t (WATERMARK FOR ts AS ts, ts TIMESTAMP(3), v INT) WITH ('a'='b')",
            &mut n,
        )
        .unwrap();
        assert_eq!(p.watermark.unwrap().expr, "ts");
        assert!(
            squash(&p.rewritten).starts_with("CREATE TABLE t ( ts TIMESTAMP(3)"),
            "{}",
            p.rewritten
        );
    }

    #[test]
    fn replaces_window_calls_with_placeholders() {
        let mut n = 0;
        let p = preprocess(
            "SELECT window_start, COUNT(*) FROM TABLE(\n  TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND)) AS w \
             GROUP BY window_start, window_end",
            &mut n,
        )
        .unwrap();
        assert_eq!(p.tvfs.len(), 1);
        let c = &p.tvfs[0];
        assert_eq!(c.kind, TvfKind::Tumble);
        assert_eq!((c.table.as_str(), c.time_column.as_str()), ("bids", "date_time"));
        assert_eq!(c.args, vec!["INTERVAL '10' SECOND".to_string()]);
        assert!(
            squash(&p.rewritten).contains("FROM __weir_tvf_0 AS w"),
            "{}",
            p.rewritten
        );
        // The rest keeps its place: same lines, same columns.
        let original = "SELECT window_start, COUNT(*) FROM TABLE(\n  TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND)) AS w";
        let last = |t: &str| t.lines().nth(1).and_then(|l| l.find(" AS w"));
        assert_eq!(last(&p.rewritten), last(original));

        let p = preprocess(
            "SELECT * FROM TABLE(SESSION(TABLE Bids PARTITION BY (a, b), DESCRIPTOR(ts), INTERVAL '5' MINUTE)) \
             UNION ALL SELECT * FROM hop(TABLE x, DESCRIPTOR(ts), INTERVAL '1' SECOND, INTERVAL '2' SECOND)",
            &mut n,
        )
        .unwrap();
        assert_eq!(p.tvfs[0].partition_by, vec!["a", "b"]);
        assert_eq!(p.tvfs[0].table, "bids");
        assert_eq!(p.tvfs[1].kind, TvfKind::Hop);
        assert!(squash(&p.rewritten).contains("FROM __weir_tvf_1 UNION ALL SELECT * FROM __weir_tvf_2"));
    }

    #[test]
    fn cuts_for_system_time_as_of() {
        let mut n = 0;
        let p = preprocess(
            "SELECT * FROM (SELECT *, PROCTIME() AS pt FROM bid) b JOIN side FOR SYSTEM_TIME AS OF b.pt AS s ON b.k = s.k",
            &mut n,
        )
        .unwrap();
        assert_eq!(
            p.lookups,
            vec![LookupClause {
                table: "side".into(),
                attribute: "b.pt".into(),
                column: Some("pt".into()),
            }]
        );
        assert!(!p.rewritten.contains("SYSTEM_TIME"), "{}", p.rewritten);
        // The clause is blanked out (positions kept), so compare words.
        let words = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            words(&p.rewritten).contains("JOIN side AS s ON"),
            "{}",
            p.rewritten
        );
        let p = preprocess(
            "SELECT * FROM bid JOIN Side FOR SYSTEM_TIME AS OF PROCTIME() s ON true",
            &mut n,
        )
        .unwrap();
        assert_eq!(p.lookups[0].table, "side");
        assert_eq!(p.lookups[0].column, None);
        assert!(words(&p.rewritten).contains("JOIN Side s ON"), "{}", p.rewritten);
        let e = preprocess(
            "SELECT * FROM bid JOIN side FOR SYSTEM_TIME AS OF 5 ON true",
            &mut n,
        )
        .unwrap_err();
        assert!(e.to_string().contains("processing-time attribute"), "{e}");
        let e = preprocess("SELECT * FROM bid JOIN FOR SYSTEM_TIME AS OF x ON true", &mut n).unwrap_err();
        assert!(e.to_string().contains("must follow a table name"), "{e}");
    }

    #[test]
    fn malformed_window_calls_say_what_is_expected() {
        let mut n = 0;
        let err = preprocess(
            "SELECT * FROM TABLE(TUMBLE(TABLE b, ts, INTERVAL '1' SECOND))",
            &mut n,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("DESCRIPTOR") && err.contains("TUMBLE(TABLE t"),
            "{err}"
        );
        let err = preprocess("SELECT * FROM TABLE(TUMBLE(TABLE b, DESCRIPTOR(ts)))", &mut n)
            .unwrap_err()
            .to_string();
        assert!(err.contains("0 interval argument"), "{err}");
    }

    fn squash(s: &str) -> String {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn parser_positions_are_moved_into_the_job_text() {
        assert_eq!(
            relocate("Expected: end of statement, found: x at Line: 1, Column: 5", 3, 7),
            "Expected: end of statement, found: x at line 3, column 11"
        );
        assert_eq!(
            relocate("found: y at Line: 2, Column: 4", 3, 7),
            "found: y at line 4, column 4"
        );
        assert_eq!(relocate("no position here", 3, 7), "no position here");
    }

    #[test]
    fn quoted_words_are_left_alone() {
        let mut n = 0;
        let p = preprocess("SELECT 'TABLE(TUMBLE(' AS x, \"watermark\" FROM t", &mut n).unwrap();
        assert!(p.tvfs.is_empty());
        assert_eq!(p.rewritten, "SELECT 'TABLE(TUMBLE(' AS x, \"watermark\" FROM t");
    }

    #[test]
    fn a_long_chain_of_operators_is_refused_before_it_is_planned() {
        let chain = |n: usize, op: &str| (0..n).map(|i| format!("k = {i}")).collect::<Vec<_>>().join(op);
        // 1,300 ORs and as many `=`: 2,599 operators in a row.
        let long = format!("SELECT * FROM t WHERE {}", chain(1_300, " OR "));
        let e = preprocess(&long, &mut 0).unwrap_err().to_string();
        assert!(
            e.contains("2599 operators in a row") && e.contains("k IN (...)"),
            "{e}"
        );
        // As many operators, but in separate expressions: each is short.
        let wide = format!("SELECT {} FROM t", chain(1_300, ", "));
        assert!(preprocess(&wide, &mut 0).is_ok());
        let fine = format!("SELECT * FROM t WHERE {}", chain(1_000, " OR "));
        assert!(preprocess(&fine, &mut 0).is_ok());
        // Parentheses start a level of their own; a clause starts afresh.
        let split = format!(
            "SELECT * FROM t WHERE ({}) AND ({})",
            chain(1_000, " OR "),
            chain(1_000, " OR ")
        );
        assert!(preprocess(&split, &mut 0).is_ok());
    }

    #[test]
    fn tablesample_is_refused_not_ignored() {
        let e = preprocess("SELECT * FROM t TABLESAMPLE SYSTEM (10 PERCENT)", &mut 0).unwrap_err();
        assert!(e.to_string().contains("TABLESAMPLE is not supported"), "{e}");
        assert!(preprocess("SELECT 'tablesample' AS tablesample_x FROM t", &mut 0).is_ok());
    }
}
