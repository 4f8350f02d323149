//! The line loop: reading statements from a person (history, a continuation
//! prompt, Ctrl-C) or from a file, and what the history keeps.

use super::*;

/// The history file: `$WEIR_HISTORY`, or `~/.weir_history`.
pub fn history_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WEIR_HISTORY") {
        return Some(PathBuf::from(p));
    }
    std::env::home_dir().map(|h| h.join(".weir_history"))
}

/// A history entry for typed input: secret option values replaced by
/// `***` (with or without the `=`). `None` (not kept) when it still holds a
/// secret the session knows (typed where no option name precedes it), or
/// when it failed and names a secret-looking key: a statement the parser
/// rejected may hold a secret where the masking could not tell.
pub(super) fn history_entry(input: &str, failed: bool, redactor: &Redactor) -> Option<String> {
    let masked = weir_sql::secrets::mask_secrets(input);
    if redactor.finds_secret(&masked) || (failed && weir_sql::secrets::mentions_secret_key(input)) {
        return None;
    }
    Some(masked)
}

/// The interactive shell: reads statements until `\q`, `quit` or Ctrl-D.
pub fn interactive(rt: &tokio::runtime::Runtime, shell: &mut Shell, history: Option<PathBuf>) -> Result<()> {
    let config = Config::builder()
        .auto_add_history(false)
        .history_ignore_space(true)
        .max_history_size(10_000)?
        .completion_type(CompletionType::List)
        .build();
    let mut editor: Editor<ShellHelper, FileHistory> = Editor::with_config(config)?;
    editor.set_helper(Some(ShellHelper::new(batch::function_names())));
    editor.set_history_ignore_dups(true)?;
    if let Some(h) = &history
        && h.exists()
        && let Err(e) = editor.load_history(h)
    {
        errln!("weir: cannot read the history {}: {e}", h.display());
    }
    outln!(
        "weir {}: streaming SQL. End statements with ';'. \\? for help, \\q to quit.",
        env!("CARGO_PKG_VERSION")
    );
    let mut pending = String::new();
    loop {
        for n in shell.notices() {
            errln!("{n}");
        }
        if let Some(tables) = shell.completion_tables()
            && let Some(h) = editor.helper_mut()
        {
            h.set_tables(tables);
        }
        // psql's way: a statement that is not finished goes on at a
        // continuation prompt, one line at a time.
        let prompt = if pending.is_empty() { "weir> " } else { "   -> " };
        let line = match editor.readline(prompt) {
            Ok(line) => line,
            // Ctrl-C drops the statement being typed.
            Err(ReadlineError::Interrupted) => {
                pending.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                errln!("error: reading input: {e}");
                break;
            }
        };
        if pending.is_empty() && line.trim().is_empty() {
            continue;
        }
        if !pending.is_empty() {
            pending.push('\n');
        }
        pending.push_str(&line);
        if !input::is_complete(&pending) {
            continue;
        }
        let text = std::mem::take(&mut pending);
        let mut quit = is_quit(&text);
        let mut failed = false;
        if !quit {
            let (pieces, _) = input::split(&text);
            let count = pieces.len();
            for (i, piece) in pieces.into_iter().enumerate() {
                match rt.block_on(shell.run_piece(&piece)) {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Quit) => {
                        quit = true;
                        break;
                    }
                    Err(e) => {
                        errln!("error: {}", shell.error_text(&e));
                        // The rest of what was typed with it is not run
                        // (it may build on what failed): said, not silent.
                        let left = count - i - 1;
                        if left > 0 {
                            errln!(
                                "({left} more statement{} typed with it not run)",
                                if left == 1 { "" } else { "s" }
                            );
                        }
                        failed = true;
                        break;
                    }
                }
            }
        }
        if let Some(entry) = history_entry(&text, failed, &shell.redactor) {
            let _ = editor.add_history_entry(entry);
            if let Some(h) = &history
                && let Err(e) = editor.append_history(h)
            {
                errln!("weir: cannot write the history {}: {e}", h.display());
            }
        }
        if quit {
            break;
        }
    }
    if editor.history().len() > 0
        && let Some(h) = &history
    {
        let _ = editor.append_history(h);
    }
    rt.block_on(shell.leave());
    Ok(())
}

/// Runs a script as the shell would; the first error stops it, naming
/// where it is (`file:line`).
pub fn run_script(rt: &tokio::runtime::Runtime, shell: &mut Shell, text: &str, name: &str) -> Result<Flow> {
    let (pieces, _) = input::split(text);
    for piece in pieces {
        for n in shell.notices() {
            errln!("{n}");
        }
        match rt.block_on(shell.run_piece(&piece)) {
            Ok(Flow::Continue) => {}
            Ok(Flow::Quit) => return Ok(Flow::Quit),
            Err(e) => {
                // Masked before it is cut (a cut secret would no longer
                // match its value when scrubbed), scrubbed after.
                let head: String = weir_sql::secrets::mask_secrets(&piece.text)
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                let head = if head.chars().count() > 50 {
                    format!("{}...", head.chars().take(47).collect::<String>())
                } else {
                    head
                };
                bail!(
                    "{name}:{}: {}\n(in `{}`)",
                    piece.line,
                    shell.error_text(&e),
                    shell.redactor.scrub(&head)
                );
            }
        }
    }
    Ok(Flow::Continue)
}
