//! What kind of statement a text is, before it is planned: the shell runs
//! each kind its own way (a declaration, a background query, a live or a
//! batch query, a command about queries). The SQL is read here, with the
//! tokenizer, so that the shell never takes SQL apart itself.

use datafusion::common::TableReference;
use datafusion::sql::parser::DFParser;
use datafusion::sql::sqlparser::ast::{self, Expr, LimitClause, Value};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::preprocess::{self, normalize_ident};
use crate::{Error, Result};

/// A statement's kind, with what the shell needs of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Statement {
    /// `CREATE TABLE ...`.
    CreateTable,
    /// `CREATE [OR REPLACE] VIEW ...`.
    CreateView,
    /// `DROP TABLE [IF EXISTS] name` or `DROP VIEW ...`.
    Drop {
        /// Whether it drops a view.
        view: bool,
        /// The name (`None` when missing).
        name: Option<String>,
        /// `IF EXISTS`.
        if_exists: bool,
    },
    /// `INSERT INTO target ...`.
    Insert {
        /// The sink table (`None` when missing).
        target: Option<String>,
        /// Whether `INTO` is there.
        into: bool,
        /// The query after `INSERT INTO target`, as typed.
        query: String,
    },
    /// A query: `SELECT`, `WITH`, `VALUES` or a parenthesized one.
    Query,
    /// `EXPLAIN [ANALYZE] statement`.
    Explain {
        /// `EXPLAIN ANALYZE`.
        analyze: bool,
        /// The statement explained, as typed.
        inner: String,
    },
    /// `SHOW QUERIES`.
    ShowQueries,
    /// `SHOW TABLES`.
    ShowTables,
    /// `STOP QUERY name`.
    StopQuery {
        /// The query's name (`None` when missing).
        name: Option<String>,
    },
    /// `DESCRIBE name` / `DESC name`.
    Describe {
        /// The table's name (`None` when missing).
        name: Option<String>,
    },
    /// `SET` alone: list the settings.
    ShowSettings,
    /// `SET key = value`.
    Set,
    /// Anything else: its first words.
    Other(String),
}

/// The statement's tokens, without whitespace and comments.
fn significant(text: &str) -> Result<Vec<Token>> {
    Ok(preprocess::tokens(text)?
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect())
}

/// A token as an upper-case keyword, if it is an unquoted word.
fn keyword(t: Option<&Token>) -> String {
    match t {
        Some(Token::Word(w)) if w.quote_style.is_none() => w.value.to_ascii_uppercase(),
        _ => String::new(),
    }
}

/// A token as a name: a word (normalized) or a quoted string.
fn name_of(t: Option<&Token>) -> Option<String> {
    match t? {
        Token::Word(w) => Some(normalize_ident(&w.value, w.quote_style.is_some())),
        Token::SingleQuotedString(s) => Some(s.clone()),
        _ => None,
    }
}

/// The table a `CREATE TABLE IF NOT EXISTS <name> ...` declares (`None`
/// for any other statement).
pub fn create_if_not_exists(text: &str) -> Result<Option<String>> {
    let toks = significant(text)?;
    let word = |i: usize| keyword(toks.get(i));
    Ok(
        if (word(0), word(1), word(2), word(3), word(4))
            == (
                "CREATE".into(),
                "TABLE".into(),
                "IF".into(),
                "NOT".into(),
                "EXISTS".into(),
            )
        {
            // The last part of a dotted name (`public.t`).
            let mut at = 5;
            while matches!(toks.get(at + 1), Some(Token::Period)) {
                at += 2;
            }
            name_of(toks.get(at))
        } else {
            None
        },
    )
}

/// What kind of statement `text` is (one statement, without its `;`).
pub fn classify(text: &str) -> Result<Statement> {
    let toks = significant(text)?;
    preprocess::check_operator_chains(&toks)?;
    preprocess::check_sampling(&toks)?;
    let word = |i: usize| keyword(toks.get(i));
    Ok(match (word(0).as_str(), word(1).as_str()) {
        ("CREATE", "TABLE") => Statement::CreateTable,
        ("CREATE", "OR") if word(3) == "TABLE" => {
            return Err(Error::Plan(format!(
                "CREATE OR REPLACE TABLE is not supported: DROP TABLE {0}, then CREATE TABLE {0} again",
                name_of(toks.get(4)).unwrap_or_else(|| "...".into())
            )));
        }
        ("CREATE", "VIEW") | ("CREATE", "OR") => Statement::CreateView,
        ("DROP", kind @ ("TABLE" | "VIEW")) => {
            let if_exists = word(2) == "IF" && word(3) == "EXISTS";
            Statement::Drop {
                view: kind == "VIEW",
                name: name_of(toks.get(if if_exists { 4 } else { 2 })),
                if_exists,
            }
        }
        ("INSERT", into) => Statement::Insert {
            target: name_of(toks.get(2)),
            into: into == "INTO",
            query: after_words(text, 3).to_string(),
        },
        ("SELECT" | "WITH" | "VALUES", _) => Statement::Query,
        _ if matches!(toks.first(), Some(Token::LParen)) => Statement::Query,
        ("EXPLAIN", second) => {
            let analyze = second == "ANALYZE";
            Statement::Explain {
                analyze,
                inner: after_words(text, if analyze { 2 } else { 1 }).to_string(),
            }
        }
        ("SHOW", "QUERIES") => Statement::ShowQueries,
        ("SHOW", "TABLES") => Statement::ShowTables,
        ("STOP", "QUERY") => Statement::StopQuery {
            name: name_of(toks.get(2)),
        },
        ("DESCRIBE" | "DESC", _) => Statement::Describe {
            name: name_of(toks.get(1)),
        },
        ("SET", _) if toks.len() == 1 => Statement::ShowSettings,
        ("SET", _) => Statement::Set,
        _ => Statement::Other(text.split_whitespace().take(2).collect::<Vec<_>>().join(" ")),
    })
}

/// The text after the first `n` words of a statement, as typed (a quoted
/// name is one word; a word ends at whitespace or `(`).
pub fn after_words(sql: &str, n: usize) -> &str {
    let mut rest = sql.trim_start();
    for _ in 0..n {
        let end = if let Some(quoted) = rest.strip_prefix('"') {
            quoted.find('"').map_or(rest.len(), |i| i + 2)
        } else {
            rest.find(|c: char| c.is_whitespace() || c == '(')
                .unwrap_or(rest.len())
        };
        rest = rest[end..].trim_start();
    }
    rest
}

/// The identifiers a text names (words outside strings and comments),
/// normalized as DataFusion does.
pub fn identifiers(text: &str) -> Result<Vec<String>> {
    Ok(preprocess::tokens(text)?
        .into_iter()
        .filter_map(|t| match t {
            Token::Word(w) => Some(normalize_ident(&w.value, w.quote_style.is_some())),
            _ => None,
        })
        .collect())
}

/// The tables a query reads (after window calls are set aside), as
/// DataFusion resolves them; a quoted path is one too.
pub fn table_references(sql: &str) -> Result<Vec<TableReference>> {
    let mut n = 0;
    let pre = preprocess::preprocess(sql, &mut n)?;
    let mut parsed =
        DFParser::parse_sql_with_dialect(&pre.rewritten, &GenericDialect {}).map_err(Error::syntax)?;
    let Some(statement) = parsed.pop_front() else {
        return Err(Error::Syntax("expected a statement".into()));
    };
    let state = datafusion::execution::SessionStateBuilder::new().build();
    Ok(state.resolve_table_references(&statement)?)
}

/// Whether a query calls a window function (`TUMBLE(...)` and its kin).
pub fn has_window_call(sql: &str) -> Result<bool> {
    let mut n = 0;
    Ok(!preprocess::preprocess(sql, &mut n)?.tvfs.is_empty())
}

/// A query whose outermost clause is `LIMIT n` (without `ORDER BY` or
/// `OFFSET`): the query without it, and n. Over a stream, a peek.
pub fn peek_limit(sql: &str) -> Result<Option<(&str, u64)>> {
    let mut n = 0;
    let pre = preprocess::preprocess(sql, &mut n)?;
    let Ok(mut parsed) = DFParser::parse_sql_with_dialect(&pre.rewritten, &GenericDialect {}) else {
        return Ok(None);
    };
    let Some(datafusion::sql::parser::Statement::Statement(statement)) = parsed.pop_front() else {
        return Ok(None);
    };
    let ast::Statement::Query(q) = *statement else {
        return Ok(None);
    };
    let Some(LimitClause::LimitOffset {
        limit: Some(Expr::Value(v)),
        offset: None,
        limit_by,
    }) = &q.limit_clause
    else {
        return Ok(None);
    };
    let (Value::Number(text, _), None, true) = (&v.value, &q.order_by, limit_by.is_empty()) else {
        return Ok(None);
    };
    let Ok(rows) = text.parse::<u64>() else {
        return Ok(None);
    };
    // The last top-level LIMIT of the text as typed, by its position (a
    // token's printed length need not be its length in the text: `\r\n`).
    let Ok(toks) = Tokenizer::new(&GenericDialect {}, sql).tokenize_with_location() else {
        return Ok(None);
    };
    let mut depth = 0i64;
    let mut at = None;
    for t in &toks {
        match &t.token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            Token::Word(w)
                if depth == 0 && w.quote_style.is_none() && w.value.eq_ignore_ascii_case("LIMIT") =>
            {
                at = Some((t.span.start.line, t.span.start.column))
            }
            _ => {}
        }
    }
    let Some((line, column)) = at else {
        return Ok(None);
    };
    // Line and column (from 1, in characters) to a byte offset.
    let (mut l, mut c) = (1, 1);
    let offset = sql.char_indices().find_map(|(i, ch)| {
        if (l, c) == (line, column) {
            return Some(i);
        }
        if ch == '\n' {
            (l, c) = (l + 1, 1);
        } else {
            c += 1;
        }
        None
    });
    Ok(offset.map(|i| (sql[..i].trim_end(), rows)))
}

/// `INTERSECT ALL` and `EXCEPT ALL` keep or take away rows by count
/// (`{7, 7, 7} INTERSECT ALL {7}` is one 7, `EXCEPT ALL` two), but
/// DataFusion 55 plans them as a semi and an anti join (three 7s, none):
/// refused, in jobs and batch queries alike, naming the forms that are
/// right.
pub fn check_set_quantifiers(statement: &ast::Statement) -> Result<()> {
    use std::ops::ControlFlow;
    struct Bags;
    fn bag(e: &ast::SetExpr) -> Option<&'static str> {
        match e {
            ast::SetExpr::SetOperation {
                op,
                set_quantifier,
                left,
                right,
            } => {
                let all = matches!(set_quantifier, ast::SetQuantifier::All);
                match op {
                    ast::SetOperator::Intersect if all => Some("INTERSECT ALL"),
                    ast::SetOperator::Except | ast::SetOperator::Minus if all => Some("EXCEPT ALL"),
                    _ => bag(left).or_else(|| bag(right)),
                }
            }
            _ => None,
        }
    }
    impl ast::Visitor for Bags {
        type Break = &'static str;
        fn pre_visit_query(&mut self, query: &ast::Query) -> ControlFlow<Self::Break> {
            match bag(&query.body) {
                Some(form) => ControlFlow::Break(form),
                None => ControlFlow::Continue(()),
            }
        }
    }
    match ast::Visit::visit(statement, &mut Bags) {
        ControlFlow::Break(form) => Err(Error::Unsupported(format!(
            "{form} is not supported: DataFusion 55 answers it as {} (each row kept or dropped whole, not by \
             count); write {} for rows without repeats, or count the rows of each side and join the counts",
            if form == "INTERSECT ALL" {
                "a semi join"
            } else {
                "an anti join"
            },
            if form == "INTERSECT ALL" {
                "INTERSECT"
            } else {
                "EXCEPT"
            }
        ))),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// [`check_set_quantifiers`] on a statement's text; text that does not
/// parse is left to the parser's own message.
pub fn check_set_quantifiers_in(sql: &str) -> Result<()> {
    let mut n = 0;
    let Ok(pre) = preprocess::preprocess(sql, &mut n) else {
        return Ok(());
    };
    let Ok(parsed) = DFParser::parse_sql_with_dialect(&pre.rewritten, &GenericDialect {}) else {
        return Ok(());
    };
    for s in parsed {
        if let datafusion::sql::parser::Statement::Statement(s) = s {
            check_set_quantifiers(&s)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_told_apart() {
        assert_eq!(
            classify("CREATE TABLE t (a INT)").unwrap(),
            Statement::CreateTable
        );
        assert_eq!(
            classify("create or replace view v as select 1").unwrap(),
            Statement::CreateView
        );
        let e = classify("CREATE OR REPLACE TABLE t (a INT)")
            .unwrap_err()
            .to_string();
        assert!(e.contains("DROP TABLE t, then CREATE TABLE t again"), "{e}");
        assert_eq!(
            create_if_not_exists("create table if not exists T (a INT)")
                .unwrap()
                .as_deref(),
            Some("t")
        );
        assert_eq!(create_if_not_exists("CREATE TABLE t (a INT)").unwrap(), None);
        assert_eq!(
            create_if_not_exists("CREATE TABLE IF NOT EXISTS public.t (a INT)")
                .unwrap()
                .as_deref(),
            Some("t")
        );
        assert_eq!(
            classify("DROP TABLE IF EXISTS \"T\"").unwrap(),
            Statement::Drop {
                view: false,
                name: Some("T".into()),
                if_exists: true
            }
        );
        assert_eq!(
            classify("INSERT INTO Out SELECT 1").unwrap(),
            Statement::Insert {
                target: Some("out".into()),
                into: true,
                query: "SELECT 1".into()
            }
        );
        assert_eq!(classify("(SELECT 1)").unwrap(), Statement::Query);
        assert_eq!(
            classify("EXPLAIN ANALYZE SELECT 1").unwrap(),
            Statement::Explain {
                analyze: true,
                inner: "SELECT 1".into()
            }
        );
        assert_eq!(classify("show queries").unwrap(), Statement::ShowQueries);
        assert_eq!(
            classify("STOP QUERY q").unwrap(),
            Statement::StopQuery {
                name: Some("q".into())
            }
        );
        assert_eq!(
            classify("DESC t").unwrap(),
            Statement::Describe {
                name: Some("t".into())
            }
        );
        assert_eq!(classify("SET").unwrap(), Statement::ShowSettings);
        assert_eq!(classify("SET a = 'b'").unwrap(), Statement::Set);
        assert_eq!(
            classify("VACUUM FULL t").unwrap(),
            Statement::Other("VACUUM FULL".into())
        );
    }

    #[test]
    fn a_peek_cuts_its_limit_wherever_lines_end() {
        for sql in [
            "SELECT a FROM bids LIMIT 5",
            "SELECT a, 'é'\r\nFROM bids\r\nWHERE a > 1\r\nLIMIT 5",
            "SELECT a\nFROM (SELECT a FROM bids LIMIT 9) AS s\nLIMIT 5",
        ] {
            let (query, n) = peek_limit(sql).unwrap().unwrap();
            assert_eq!(n, 5);
            assert!(
                query.ends_with("bids") || query.ends_with("a > 1") || query.ends_with("AS s"),
                "{query:?}"
            );
        }
        assert!(
            peek_limit("SELECT a FROM bids ORDER BY a LIMIT 5")
                .unwrap()
                .is_none()
        );
        assert!(peek_limit("SELECT a FROM bids").unwrap().is_none());
    }

    #[test]
    fn the_tables_a_query_reads() {
        let refs = table_references(
            "SELECT * FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '1' SECOND)) JOIN 'out/x/' ON 1 = 1",
        )
        .unwrap();
        let names: Vec<String> = refs.iter().map(|r| r.table().to_string()).collect();
        assert!(names.contains(&"out/x/".to_string()), "{names:?}");
        assert!(
            has_window_call(
                "SELECT * FROM TABLE(HOP(TABLE b, DESCRIPTOR(t), INTERVAL '1' SECOND, INTERVAL '2' SECOND))"
            )
            .unwrap()
        );
        assert_eq!(
            identifiers("SELECT \"A\", b FROM c -- d").unwrap(),
            vec!["select", "A", "b", "from", "c"]
        );
    }
}

/// Refuses `IS [NOT] DISTINCT FROM` followed by an operator that binds
/// looser than it (AND, OR, another IS) without parentheses: sqlparser
/// 0.62 reads all that follows it as its right side, so `a IS NOT
/// DISTINCT FROM b AND c = d` was `a IS NOT DISTINCT FROM (b AND c = d)`
/// (refused by DataFusion as "Int64 AND Boolean", or, over booleans, run
/// with another meaning than PostgreSQL's `(a IS NOT DISTINCT FROM b) AND
/// c = d`). A right side the query parenthesizes itself is fine.
pub fn check_distinct_from(statement: &ast::Statement) -> Result<()> {
    use std::ops::ControlFlow;
    let swallowed = |b: &Expr| match b {
        Expr::BinaryOp { op, .. } => matches!(op, ast::BinaryOperator::And | ast::BinaryOperator::Or),
        Expr::IsNull(_)
        | Expr::IsNotNull(_)
        | Expr::IsTrue(_)
        | Expr::IsNotTrue(_)
        | Expr::IsFalse(_)
        | Expr::IsNotFalse(_)
        | Expr::IsUnknown(_)
        | Expr::IsNotUnknown(_)
        | Expr::IsDistinctFrom(..)
        | Expr::IsNotDistinctFrom(..) => true,
        _ => false,
    };
    let found = ast::visit_expressions(statement, |e| match e {
        Expr::IsDistinctFrom(a, b) | Expr::IsNotDistinctFrom(a, b) if swallowed(b) => {
            let not = if matches!(e, Expr::IsNotDistinctFrom(..)) {
                "NOT "
            } else {
                ""
            };
            ControlFlow::Break(format!("{a} IS {not}DISTINCT FROM {b}"))
        }
        _ => ControlFlow::Continue(()),
    });
    match found {
        ControlFlow::Break(text) => Err(Error::Plan(format!(
            "`{text}`: the SQL parser reads all that follows IS [NOT] DISTINCT FROM as its right side; put \
             the comparison in parentheses, e.g. `(a IS NOT DISTINCT FROM b) AND c = d`"
        ))),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// [`check_distinct_from`] for a batch query's text (an EXPLAIN's or a
/// COPY's query too). Text that does not parse is left to DataFusion.
pub fn check_distinct_from_in(sql: &str) -> Result<()> {
    use datafusion::sql::parser::{CopyToSource, Statement as DF};
    let Ok(parsed) = DFParser::parse_sql_with_dialect(sql, &GenericDialect {}) else {
        return Ok(());
    };
    fn check(s: &DF) -> Result<()> {
        match s {
            DF::Statement(s) => check_distinct_from(s),
            DF::Explain(e) => check(&e.statement),
            DF::CopyTo(c) => match &c.source {
                CopyToSource::Query(q) => check_distinct_from(&ast::Statement::Query(q.clone())),
                CopyToSource::Relation(_) => Ok(()),
            },
            _ => Ok(()),
        }
    }
    parsed.iter().try_for_each(check)
}

#[cfg(test)]
mod distinct_from_tests {
    use super::*;

    #[test]
    fn an_unparenthesized_is_distinct_from_before_and_or_is_refused() {
        for sql in [
            "SELECT * FROM t JOIN u ON t.a IS NOT DISTINCT FROM u.a AND t.b = u.b",
            "SELECT p AND x IS DISTINCT FROM y OR q FROM t",
            "SELECT * FROM t WHERE NOT a IS DISTINCT FROM b AND c",
            "SELECT a IS DISTINCT FROM b IS NULL FROM t",
            "EXPLAIN SELECT * FROM t WHERE a IS NOT DISTINCT FROM b AND c",
            "COPY (SELECT * FROM t WHERE a IS DISTINCT FROM b OR c) TO 'x.parquet'",
        ] {
            let e = check_distinct_from_in(sql).expect_err(sql).to_string();
            assert!(e.contains("put the comparison in parentheses"), "{sql}: {e}");
        }
        for sql in [
            "SELECT * FROM t JOIN u ON (t.a IS NOT DISTINCT FROM u.a) AND t.b = u.b",
            "SELECT x IS DISTINCT FROM (p AND q) FROM t",
            "SELECT x IS DISTINCT FROM y, a IS DISTINCT FROM b + 1 FROM t",
            "SELECT * FROM t WHERE a IS NOT DISTINCT FROM b",
        ] {
            assert!(check_distinct_from_in(sql).is_ok(), "{sql}");
        }
    }
}
