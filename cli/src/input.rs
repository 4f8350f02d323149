//! Cutting typed or saved text into statements, the way psql does.
//!
//! A statement ends at a `;` outside quotes and comments and may span lines;
//! a line starting with `\` (when no statement is in progress) is a shell
//! command and ends at the end of the line. The same scanner tells the line
//! editor whether the input is complete (see `helper.rs`) and cuts a file
//! (`weir -f`) or piped input into the pieces the shell runs, so both read
//! text identically.

/// One piece of input: a SQL statement (without its `;`) or a `\` command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The text, trimmed.
    pub text: String,
    /// The 1-based line where it starts.
    pub line: usize,
    /// Whether this is a `\` command.
    pub command: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Normal,
    /// Inside a quoted string or identifier closed by this character.
    Quoted(char),
    /// Inside an escape string (`E'it\'s'`), where a backslash escapes
    /// the next character, a quote included.
    Escaped,
    /// Inside a dollar-quoted string (`$$...$$`, `$tag$...$tag$`), closed
    /// by the tag at `chars[.0..][..1]`.
    Dollar(usize, usize),
    LineComment,
    /// Inside `/* ... */`, nested this deep.
    BlockComment(usize),
}

/// A character of a word (an identifier, a keyword, a dollar quote's tag).
fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The text from `chars[i]` to the end of its line, and where that ends.
fn rest_of_line(chars: &[char], i: usize) -> (String, usize) {
    let end = chars[i..]
        .iter()
        .position(|&c| c == '\n')
        .map_or(chars.len(), |p| i + p);
    (chars[i..end].iter().collect(), end)
}

/// The pieces of a text, and whether it ended inside a statement (text after
/// the last `;`, or an open quote or comment).
pub fn split(text: &str) -> (Vec<Piece>, bool) {
    let mut pieces = Vec::new();
    let mut state = State::Normal;
    // The statement in progress: its text, its first line, and whether it
    // has anything but whitespace and comments.
    let mut current = String::new();
    let mut start_line = 1;
    let mut content = false;
    let mut line = 1;
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        // A command: at a line's start, or after a statement's `;` on the
        // same line (`SELECT 1; \d`), as psql reads it.
        if state == State::Normal && !content && c == '\\' {
            // A command: the rest of the line.
            let (cmd, end) = rest_of_line(&chars, i);
            pieces.push(Piece {
                text: cmd.trim().to_string(),
                line,
                command: true,
            });
            current.clear();
            i = end;
            continue;
        }
        // SQLite's and DuckDB's dot-commands (`.tables`) end at the line's
        // end, as there: waiting for a `;` left their users at a
        // continuation prompt. No statement starts with a dot; the shell
        // answers with its own command (or quits, for `.quit`).
        if state == State::Normal && !content && c == '.' && next.is_some_and(|n| n.is_ascii_alphabetic()) {
            let (cmd, end) = rest_of_line(&chars, i);
            pieces.push(Piece {
                text: cmd.trim().trim_end_matches(';').trim().to_string(),
                line,
                command: false,
            });
            current.clear();
            i = end;
            continue;
        }
        if c == '\n' {
            line += 1;
        }
        match state {
            State::Normal => match c {
                ';' => {
                    if content {
                        pieces.push(Piece {
                            text: current.trim().to_string(),
                            line: start_line,
                            command: false,
                        });
                    }
                    current.clear();
                    content = false;
                    i += 1;
                    continue;
                }
                '-' if next == Some('-') => state = State::LineComment,
                '/' if next == Some('*') => {
                    state = State::BlockComment(1);
                    current.push_str("/*");
                    i += 2;
                    continue;
                }
                // `E'...'` (not the end of a longer word): an escape string.
                '\'' if i > 0
                    && matches!(chars[i - 1], 'E' | 'e')
                    && (i == 1 || !(is_word(chars[i - 2]) || chars[i - 2] == '$')) =>
                {
                    state = State::Escaped;
                    mark_content(&mut content, &mut start_line, line, &mut current);
                }
                '\'' | '"' | '`' => {
                    state = State::Quoted(c);
                    mark_content(&mut content, &mut start_line, line, &mut current);
                }
                // Not inside a word: the parser reads `$` in an identifier
                // (`a$$b`) as part of it.
                '$' if i == 0 || !(is_word(chars[i - 1]) || chars[i - 1] == '$') => {
                    // `$$` or `$tag$`, as the parser reads them (`$1` alone
                    // is a parameter, `$1$...$1$` a quote).
                    let tag = chars[i + 1..].iter().take_while(|&&c| is_word(c)).count();
                    let opens = chars.get(i + 1 + tag) == Some(&'$');
                    if opens {
                        state = State::Dollar(i, tag + 2);
                        mark_content(&mut content, &mut start_line, line, &mut current);
                        current.extend(&chars[i..i + tag + 2]);
                        i += tag + 2;
                        continue;
                    }
                    mark_content(&mut content, &mut start_line, line, &mut current);
                }
                c if c.is_whitespace() => {}
                _ => mark_content(&mut content, &mut start_line, line, &mut current),
            },
            State::Quoted(q) => {
                if c == q {
                    // A doubled quote ('it''s') is an escaped quote: the
                    // string closes here and reopens at once.
                    state = State::Normal;
                }
            }
            State::Escaped => match c {
                '\\' if next.is_some() => {
                    current.push(c);
                    i += 1;
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    current.push(chars[i]);
                    i += 1;
                    continue;
                }
                '\'' => state = State::Normal,
                _ => {}
            },
            State::Dollar(at, len) => {
                if chars.get(i..i + len) == Some(&chars[at..at + len]) {
                    current.extend(&chars[i..i + len]);
                    i += len;
                    state = State::Normal;
                    continue;
                }
            }
            State::LineComment => {
                if c == '\n' {
                    state = State::Normal;
                }
            }
            State::BlockComment(depth) => {
                if c == '*' && next == Some('/') {
                    state = if depth == 1 {
                        State::Normal
                    } else {
                        State::BlockComment(depth - 1)
                    };
                    current.push_str("*/");
                    i += 2;
                    continue;
                } else if c == '/' && next == Some('*') {
                    state = State::BlockComment(depth + 1);
                    current.push_str("/*");
                    i += 2;
                    continue;
                }
            }
        }
        current.push(c);
        i += 1;
    }
    let open = content
        || matches!(
            state,
            State::Quoted(_) | State::Escaped | State::Dollar(..) | State::BlockComment(_)
        );
    if content {
        pieces.push(Piece {
            text: current.trim().to_string(),
            line: start_line,
            command: false,
        });
    }
    (pieces, open)
}

/// The statement's first significant character: comments before it are
/// not part of the statement.
fn mark_content(content: &mut bool, start_line: &mut usize, line: usize, current: &mut String) {
    if !*content {
        *content = true;
        *start_line = line;
        current.clear();
    }
}

/// Whether typed input is ready to run: every statement ended with `;`, or it
/// is a `\` command, or a bare `quit`/`exit` (as psql accepts).
pub fn is_complete(input: &str) -> bool {
    let trimmed = input.trim();
    if trimmed.is_empty() || is_quit(trimmed) {
        return true;
    }
    let (_, open) = split(input);
    !open
}

/// `quit` or `exit` (or SQLite's `.quit`, `.exit`), alone on the input
/// (with or without `;`).
pub fn is_quit(input: &str) -> bool {
    let word = input.trim().trim_end_matches(';').trim();
    let word = word.strip_prefix('.').unwrap_or(word);
    word.eq_ignore_ascii_case("quit") || word.eq_ignore_ascii_case("exit")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(input: &str) -> Vec<String> {
        split(input).0.into_iter().map(|p| p.text).collect()
    }

    /// A dot-command ends at its line's end, as in SQLite's and DuckDB's
    /// shells; a dot inside a statement is the statement's.
    #[test]
    fn a_dot_command_needs_no_semicolon() {
        assert!(is_complete(".tables"));
        assert!(is_complete("  .mode csv"));
        assert!(is_quit(".quit") && is_quit(".exit;"));
        assert_eq!(texts(".tables\nSELECT 1;"), [".tables", "SELECT 1"]);
        assert_eq!(texts("SELECT t\n.a FROM t;"), ["SELECT t\n.a FROM t"]);
        assert!(!is_complete("SELECT t\n.a FROM t"));
        assert!(!is_complete(".5"), "a number is no command");
    }

    #[test]
    fn a_statement_ends_at_a_semicolon_and_may_span_lines() {
        assert!(!is_complete("SELECT 1"));
        assert!(!is_complete("SELECT 1\nFROM t"));
        assert!(is_complete("SELECT 1\nFROM t;"));
        assert!(is_complete("SELECT 1;   "));
        assert!(is_complete("SELECT 1; -- trailing comment"));
        assert!(!is_complete("SELECT 1; SELECT 2"), "the second statement is open");
        assert!(is_complete(""), "an empty line is nothing to wait for");
    }

    #[test]
    fn semicolons_in_quotes_and_comments_do_not_end_a_statement() {
        assert!(!is_complete("SELECT ';"));
        assert!(!is_complete("SELECT 'a;b'"));
        assert!(is_complete("SELECT 'a;b';"));
        assert!(is_complete("SELECT 'it''s; here';"));
        assert!(!is_complete("SELECT \"col;"));
        assert!(!is_complete("SELECT 1 -- not the end;"));
        assert!(is_complete("SELECT 1 -- not the end;\n;"));
        assert!(!is_complete("SELECT /* ; */ 1"));
        assert!(!is_complete("SELECT /* /* nested */ ; */ 1"));
        assert!(is_complete("SELECT /* /* nested */ ; */ 1;"));
        assert!(!is_complete("SELECT 1 /* open comment;"));
        // An escape string: a backslash escapes its quote.
        assert!(!is_complete("SELECT E'it\\'s; here"));
        assert!(is_complete("SELECT e'it\\'s; here';"));
        let (pieces, _) = split("SELECT E'a\\'; b' AS x; SELECT 'c\\'; SELECT 1;");
        let texts: Vec<&str> = pieces.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(texts, ["SELECT E'a\\'; b' AS x", "SELECT 'c\\'", "SELECT 1"]);
        // A word ending in E before a quote is not an escape string.
        assert!(is_complete("SELECT name'x\\';"));
    }

    #[test]
    fn commands_and_quit_need_no_semicolon() {
        assert!(is_complete("\\d"));
        assert!(is_complete("  \\d bids"));
        assert!(is_complete("quit"));
        assert!(is_complete("EXIT;"));
        assert!(!is_complete("quitting"));
    }

    #[test]
    fn a_script_splits_into_statements_and_commands_with_their_lines() {
        let (pieces, open) = split(
            "-- set up\nCREATE TABLE t (a INT)\n  WITH ('path' = 'x;y');\n\\timing on\n\nSELECT ';' /* ; */\nFROM t; ;\nSELECT 2",
        );
        assert!(open, "the last statement has no semicolon");
        assert_eq!(
            pieces,
            vec![
                Piece {
                    text: "CREATE TABLE t (a INT)\n  WITH ('path' = 'x;y')".into(),
                    line: 2,
                    command: false
                },
                Piece {
                    text: "\\timing on".into(),
                    line: 4,
                    command: true
                },
                Piece {
                    text: "SELECT ';' /* ; */\nFROM t".into(),
                    line: 6,
                    command: false
                },
                Piece {
                    text: "SELECT 2".into(),
                    line: 8,
                    command: false
                },
            ]
        );
        assert_eq!(
            texts("SELECT 1; -- only a comment\n/* and another */;"),
            vec!["SELECT 1"]
        );
    }

    /// The quotes the SQL parser reads are the quotes the splitter reads: a
    /// dollar-quoted string holds `;` and `'` (the shell cut `$$a;b$$` in
    /// two), and a backslash escapes nothing in a plain string (the parser,
    /// with its generic dialect, reads `'a\'` as a whole string).
    #[test]
    fn dollar_quoted_strings_hold_semicolons_and_quotes() {
        assert_eq!(texts("SELECT 'a\\';SELECT 2;"), vec!["SELECT 'a\\'", "SELECT 2"]);
        assert_eq!(texts("SELECT $$a;b'$$;"), vec!["SELECT $$a;b'$$"]);
        assert_eq!(texts("SELECT $k$a;$$;b$k$, 2;"), vec!["SELECT $k$a;$$;b$k$, 2"]);
        assert_eq!(texts("SELECT $1;SELECT 2;"), vec!["SELECT $1", "SELECT 2"]);
        assert_eq!(texts("SELECT $1$a;$1$ AS x;"), vec!["SELECT $1$a;$1$ AS x"]);
        assert_eq!(
            texts("SELECT 1 AS a$$b$; SELECT 2;"),
            vec!["SELECT 1 AS a$$b$", "SELECT 2"]
        );
        assert!(!is_complete("SELECT $$a;"));
    }

    #[test]
    fn a_command_may_follow_a_statement_on_its_line() {
        let (pieces, open) = split("SELECT 1; \\d\n");
        assert!(!open);
        assert_eq!(pieces.len(), 2);
        assert!(!pieces[0].command && pieces[1].command && pieces[1].text == "\\d");
    }

    #[test]
    fn a_backslash_inside_a_statement_is_text() {
        assert_eq!(texts("SELECT 1 +\n\\ 2;"), vec!["SELECT 1 +\n\\ 2"]);
        assert_eq!(texts("SELECT '\n\\d';"), vec!["SELECT '\n\\d'"]);
    }
}
