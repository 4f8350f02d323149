//! The shell, driven as a person drives it: the real `weir` binary in a
//! pseudo-terminal, keys typed into it, and assertions on the screen as a
//! terminal (vt100) draws it. Waits are for screen text, with a timeout;
//! nothing sleeps for a fixed time. Then `weir -f`, `weir -i`, piped input
//! and `weir query` without a terminal.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::fs::File;
use std::io::{Read, Write};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use rexpect::process::{PtyProcess, WaitStatus};

const ROWS: u16 = 60;
const COLS: u16 = 200;
/// Generous: the machine may be busy compiling.
const TIMEOUT: Duration = Duration::from_secs(60);

const UP: &str = "\x1b[A";
const CTRL_C: &str = "\x03";
const CTRL_D: &str = "\x04";
const CTRL_L: &str = "\x0c";

/// `weir` in a pseudo-terminal, with what it drew.
struct Term {
    process: PtyProcess,
    input: File,
    screen: Arc<Mutex<vt100::Parser>>,
    /// Every byte written to the terminal.
    raw: Arc<Mutex<Vec<u8>>>,
    /// Set when the reader has seen the terminal close: every byte weir
    /// wrote is then in `screen` and `raw`.
    drained: Arc<AtomicBool>,
}

impl Term {
    fn spawn(ws: &Workspace, args: &[&str]) -> Term {
        // The terminal's size is set before weir starts, as a real one has it.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("stty rows {ROWS} cols {COLS} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_weir"))
            .args(args)
            .current_dir(ws.dir.path())
            .env("HOME", ws.dir.path())
            .env("TERM", "xterm-256color")
            .env_remove("WEIR_HISTORY")
            .env_remove("WEIR_FAILPOINT");
        let mut process = PtyProcess::new(cmd).expect("spawn weir in a pty");
        process.set_kill_timeout(Some(5_000));
        let mut output = process.get_file_handle().unwrap();
        let input = process.get_file_handle().unwrap();
        let screen = Arc::new(Mutex::new(vt100::Parser::new(ROWS, COLS, 0)));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let drained = Arc::new(AtomicBool::new(false));
        let (s, r, d) = (Arc::clone(&screen), Arc::clone(&raw), Arc::clone(&drained));
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = output.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.lock().unwrap().process(&buf[..n]);
                r.lock().unwrap().extend_from_slice(&buf[..n]);
            }
            // The pty reads EIO (or 0) once weir and all it started have
            // closed it.
            d.store(true, Ordering::Release);
        });
        Term {
            process,
            input,
            screen,
            raw,
            drained,
        }
    }

    fn send(&mut self, keys: &str) {
        self.input.write_all(keys.as_bytes()).unwrap();
        self.input.flush().unwrap();
    }

    /// Types a line and Enter.
    fn line(&mut self, text: &str) {
        self.send(text);
        self.send("\r");
    }

    fn screen(&self) -> String {
        self.screen.lock().unwrap().screen().contents()
    }

    fn raw(&self) -> String {
        String::from_utf8_lossy(&self.raw.lock().unwrap()).into_owned()
    }

    /// Waits until the screen shows `text` `times` times; returns the screen.
    fn wait_for_n(&self, text: &str, times: usize) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let screen = self.screen();
            if screen.matches(text).count() >= times {
                return screen;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {text:?} ({times}x); the screen:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_for(&self, text: &str) -> String {
        self.wait_for_n(text, 1)
    }

    /// Waits until the screen satisfies `done`; returns the screen.
    fn wait_until(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; the screen:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for an empty prompt: the line editor is reading again. Keys
    /// that the terminal itself interprets outside the editor (Ctrl-C,
    /// Ctrl-D) must wait for it; typed text may go ahead.
    fn prompt(&self) {
        self.wait_until("the prompt", |s| {
            s.lines().rev().find(|l| !l.trim().is_empty()).map(str::trim) == Some("weir>")
        });
    }

    /// Clears the screen (Ctrl-L at the prompt), so that what follows is
    /// all that is on it.
    fn clear(&mut self) {
        self.send(CTRL_L);
        let deadline = Instant::now() + TIMEOUT;
        while self.screen().trim() != "weir>" {
            assert!(
                Instant::now() < deadline,
                "the screen did not clear:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit; returns its exit code.
    fn wait_exit(&self) -> i32 {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self.process.status() {
                Some(WaitStatus::Exited(_, code)) => {
                    // The process is gone but the reader thread may not yet
                    // have read its last writes from the pty: wait for it,
                    // so that `raw` and `screen` hold the whole run.
                    while !self.drained.load(Ordering::Acquire) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    return code;
                }
                Some(WaitStatus::StillAlive) | None => {}
                Some(other) => panic!("weir ended with {other:?}:\n{}", self.screen()),
            }
            assert!(
                Instant::now() < deadline,
                "weir did not exit; the screen:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

const DECLARE: &str = "\
CREATE TABLE bids (auction BIGINT, price BIGINT, date_time TIMESTAMP(3),
  WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND)
  WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'parquet');
CREATE TABLE out WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet');
";

const WINDOWS: &str = "SELECT window_start, window_end, COUNT(*) AS n, SUM(price) AS s \
     FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND)) \
     GROUP BY window_start, window_end";

/// The same windows as a batch query: `ws|we|n|s` rows, sorted.
const WINDOWS_ORACLE: &str = "SELECT date_bin(INTERVAL '10' SECOND, date_time) AS ws,
        date_bin(INTERVAL '10' SECOND, date_time) + INTERVAL '10' SECOND AS we, COUNT(*), SUM(price)
 FROM bids GROUP BY 1, 2";

/// 2,000 bids over 100 seconds, in order (none late), and the workspace's
/// `init.sql` declaring them.
fn workspace() -> (Workspace, Vec<Bid>) {
    let ws = Workspace::new();
    let bids = gen_bids(11, 2000, BASE_MS, 0);
    write_parquet(&ws.path("in/a.parquet"), &bids[..1000]);
    write_parquet(&ws.path("in/b.parquet"), &bids[1000..]);
    ws.write("init.sql", DECLARE);
    (ws, bids)
}

/// The cells of an `a|b|c` row.
fn cells(row: &str) -> Vec<String> {
    row.split('|').map(str::to_string).collect()
}

/// The data rows of the tables on a screen, as trimmed cells.
fn table_rows(screen: &str) -> Vec<Vec<String>> {
    screen
        .lines()
        .filter(|l| l.starts_with("| 2026-"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

#[test]
fn a_statement_may_span_lines_and_a_semicolon_in_quotes_does_not_end_it() {
    let ws = Workspace::new();
    let mut t = Term::spawn(&ws, &[]);
    t.wait_for("weir> ");
    t.line("SELECT 'semi;colon' AS s,");
    t.line("  40 +");
    t.line("  2 AS answer;");
    let screen = t.wait_for("(1 row)");
    assert!(screen.contains("| s          | answer |"), "{screen}");
    assert!(screen.contains("| semi;colon |     42 |"), "{screen}");
    assert!(!screen.contains("error"), "an unfinished line ran:\n{screen}");
    // An error is a line or two, and the shell goes on.
    t.line("SELECT nope FROM nowhere;");
    t.wait_for("error: ");
    // The whole error is on the screen once the shell prompts again.
    t.prompt();
    let screen = t.screen();
    let error_lines: Vec<&str> = screen.lines().skip_while(|l| !l.starts_with("error: ")).collect();
    assert!(error_lines.len() <= 3, "{screen}");
    t.line("SELECT 1 AS one;");
    t.wait_for("| one |");
    t.prompt();
    t.send(CTRL_D);
    assert_eq!(t.wait_exit(), 0);
}

#[test]
fn history_is_recalled_across_sessions_without_secrets() {
    let ws = Workspace::new();
    let mut t = Term::spawn(&ws, &[]);
    t.wait_for("weir> ");
    t.line(
        "CREATE TABLE vault WITH ('connector' = 'files', 'path' = 's3://b/v/', 'format' = 'parquet', \
         's3.secret_access_key' = 'hunter2-very-secret');",
    );
    t.wait_for("declared vault");
    t.line("\\d vault");
    let screen = t.wait_for("'s3.secret_access_key' = '***'");
    assert_eq!(
        screen.matches("hunter2-very-secret").count(),
        1,
        "only as typed:\n{screen}"
    );
    t.line("SELECT 6 *");
    t.line("7 AS answer;");
    t.wait_for("|     42 |");
    t.line("\\q");
    assert_eq!(t.wait_exit(), 0);

    let history = std::fs::read_to_string(ws.path(".weir_history")).unwrap();
    assert!(history.contains("SELECT 6 *"), "{history}");
    assert!(
        !history.contains("hunter2"),
        "a secret reached the history:\n{history}"
    );
    assert!(history.contains("'s3.secret_access_key' = '***'"), "{history}");

    let mut t = Term::spawn(&ws, &[]);
    t.wait_for("weir> ");
    // The newest entry is the `\q` that ended the last session; the one
    // before is the two-line statement.
    t.send(UP);
    t.wait_for("weir> \\q");
    t.send(UP);
    t.wait_for("7 AS answer;");
    let screen = t.wait_for("weir> SELECT 6 *");
    assert!(!screen.contains("|     42 |"), "{screen}");
    t.send("\r");
    t.wait_for("|     42 |");
    t.prompt();
    t.send(CTRL_D);
    assert_eq!(t.wait_exit(), 0);
}

#[test]
fn an_open_statement_shows_a_continuation_prompt_and_ctrl_c_drops_it() {
    let ws = Workspace::new();
    let mut t = Term::spawn(&ws, &[]);
    t.wait_for("weir> ");
    t.line("SELECT 40 +");
    t.wait_for("   -> ");
    t.line("2 AS answer;");
    t.wait_for("|     42 |");
    t.prompt();
    // Ctrl-C in an open statement drops it: the next line starts afresh.
    t.line("SELECT 'dropped' AS s,");
    t.wait_for_n("   -> ", 2);
    t.send(CTRL_C);
    t.prompt();
    t.line("SELECT 'kept' AS s;");
    let screen = t.wait_for("| kept |");
    assert!(!screen.contains("| dropped"), "{screen}");
    t.prompt();
    // SQLite's and DuckDB's dot-commands answer at the line's end (they
    // waited for a `;` at a continuation prompt); `.quit` leaves.
    t.line(".tables");
    t.wait_for("here it is \\d, or SHOW TABLES");
    t.prompt();
    t.line(".quit");
    assert_eq!(t.wait_exit(), 0);
}

#[test]
fn the_history_keeps_no_statement_with_a_known_or_mistyped_secret() {
    let ws = Workspace::new();
    let mut t = Term::spawn(&ws, &[]);
    t.wait_for("weir> ");
    t.line(
        "CREATE TABLE vault WITH ('connector' = 'files', 'path' = 's3://b/v/', 'format' = 'parquet', \
         's3.secret_access_key' = 'hunter2-very-secret');",
    );
    t.wait_for("declared vault");
    // The `=` forgotten: the error shows no secret, and the history keeps
    // nothing of the statement.
    t.line(
        "CREATE TABLE vault2 WITH ('connector' = 'files', 'path' = 's3://b/w/', \
         's3.secret_access_key' 'typo-secret-value');",
    );
    t.wait_for("error: ");
    t.prompt();
    let screen = t.screen();
    let errors: Vec<&str> = screen.lines().filter(|l| l.starts_with("error: ")).collect();
    assert!(
        errors.iter().all(|l| !l.contains("typo-secret-value")),
        "{screen}"
    );
    assert!(errors.iter().any(|l| l.contains("found: '***'")), "{screen}");
    // A known secret typed where no option name precedes it: the query
    // runs (its result is the user's data), the history does not keep it.
    t.line("SELECT 'hunter2-very-secret' AS s;");
    t.wait_for("(1 row)");
    t.line("SELECT 'plain' AS p;");
    t.wait_for("| plain |");
    t.line("\\q");
    assert_eq!(t.wait_exit(), 0);
    let history = std::fs::read_to_string(ws.path(".weir_history")).unwrap();
    for secret in ["hunter2", "typo-secret"] {
        assert!(
            !history.contains(secret),
            "{secret} reached the history:\n{history}"
        );
    }
    assert!(
        !history.contains("vault2"),
        "a rejected statement with a secret key:\n{history}"
    );
    assert!(history.contains("SELECT 'plain' AS p;"), "{history}");
    assert!(history.contains("'s3.secret_access_key' = '***'"), "{history}");
}

/// `weir query` on a terminal prints every row: it is one command whose
/// output was asked for (the shell cuts tables at `\maxrows`, a setting
/// `weir query` has no way to change).
#[test]
fn weir_query_on_a_terminal_prints_every_row() {
    let (ws, _) = workspace();
    let t = Term::spawn(&ws, &["query", "SELECT value FROM generate_series(1, 45)"]);
    assert_eq!(t.wait_exit(), 0);
    let raw = t.raw();
    assert!(raw.contains("(45 rows)") && raw.contains(" 45 |"), "{raw}");
    assert!(!raw.contains("rows shown"), "{raw}");
}

/// Statements typed on one line after one that fails are not run, and the
/// shell says so; `CREATE TABLE IF NOT EXISTS` of a declared table leaves
/// it, and `CREATE OR REPLACE TABLE` says what to do instead.
#[test]
fn what_a_failed_line_left_unrun_is_said() {
    let (ws, _) = workspace();
    let mut t = Term::spawn(&ws, &["-i", "init.sql"]);
    t.wait_for("weir> ");
    t.line("SELECT nosuchcol FROM 'in/'; SELECT 2 AS b; SELECT 3 AS c;");
    t.wait_for("(2 more statements typed with it not run)");
    t.prompt();
    t.line("CREATE TABLE IF NOT EXISTS bids (x INT) WITH ('connector' = 'blackhole');");
    t.wait_for("table bids is already declared; left as it is (IF NOT EXISTS)");
    t.prompt();
    t.line("CREATE OR REPLACE TABLE bids (x INT) WITH ('connector' = 'blackhole');");
    t.wait_for("DROP TABLE bids, then CREATE TABLE bids again");
    t.prompt();
    t.send(CTRL_D);
    assert_eq!(t.wait_exit(), 0);
}

#[test]
fn tab_completes_table_names() {
    let (ws, _) = workspace();
    let mut t = Term::spawn(&ws, &["-i", "init.sql"]);
    t.wait_for("weir> ");
    t.send("SELECT COUNT(*) FROM o\t");
    t.wait_for("weir> SELECT COUNT(*) FROM out");
    // A sink without output yet: a clear error, and the shell goes on.
    t.line(";");
    t.wait_for("error: 'out' has no committed output yet");
    t.send("\\d bi\t");
    t.wait_for("weir> \\d bids");
    t.send("\r");
    let screen = t.wait_for("Watermark: WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND");
    assert!(screen.contains("Source bids"), "{screen}");
    assert!(
        screen.contains("| date_time | TIMESTAMP(3) |"),
        "as declared: {screen}"
    );
    t.prompt();
    t.send(CTRL_D);
    assert_eq!(t.wait_exit(), 0);
}

#[test]
fn a_live_query_prints_windows_as_they_close_until_ctrl_c() {
    let (ws, bids) = workspace();
    let mut t = Term::spawn(&ws, &["-i", "init.sql"]);
    t.wait_for("weir> ");
    t.clear();
    t.line(&format!("{WINDOWS};"));
    t.wait_for("| window_start            | window_end              |");
    // The input covers ten windows; the watermark (latest event - 2 s) has
    // closed the first nine, and the tenth stays open: the query is live,
    // waiting for more input.
    let oracle = batch_query(&bids, WINDOWS_ORACLE);
    let closed: Vec<Vec<String>> = oracle[..9].iter().map(|r| cells(r)).collect();
    t.wait_until("nine windows", |s| table_rows(s).len() == 9);
    t.send(CTRL_C);
    let screen = t.wait_for("rows; stopped)");
    assert_eq!(table_rows(&screen), closed, "{screen}");
    assert!(screen.contains("(9 rows; stopped)"), "{screen}");
    // Back at the prompt, and the shell goes on.
    t.line("SELECT 1 AS one;");
    t.wait_for("| one |");
    t.prompt();
    t.send(CTRL_D);
    assert_eq!(t.wait_exit(), 0);
}

/// Runs `SHOW QUERIES` until its row for `name` shows `what`.
fn wait_for_query(t: &mut Term, name: &str, what: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        t.clear();
        t.line("SHOW QUERIES;");
        let screen = t.wait_for("(1 row)");
        if screen
            .lines()
            .any(|l| l.starts_with(&format!("| {name} ")) && l.contains(what))
        {
            return screen;
        }
        assert!(Instant::now() < deadline, "no {what:?} in:\n{screen}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_background_query_is_listed_stopped_queried_and_resumed() {
    let (ws, bids) = workspace();
    let mut t = Term::spawn(&ws, &["-i", "init.sql"]);
    t.wait_for("weir> ");
    // A table named like one of the query's columns (`price`), declared
    // before it starts: the query does not read it.
    t.line("CREATE TABLE price (x INT) WITH ('connector' = 'files', 'path' = 'p/', 'format' = 'csv');");
    t.line(&format!("INSERT INTO out {WINDOWS};"));
    t.wait_for("started query out (checkpoint .weir/checkpoints/out)");
    // The shell takes statements while the query runs.
    t.line("SELECT 2 AS two;");
    t.wait_for("| two |");
    // What it reads stays declared while it runs (a source could be
    // dropped, and \d no longer listed it); a view is dropped as a view.
    t.line("DROP TABLE bids;");
    t.wait_for("query 'out' reads 'bids'; STOP QUERY out first");
    t.line("DROP TABLE price;");
    t.wait_for("dropped price (its files stay where they are)");
    t.line("CREATE VIEW one AS SELECT 1 AS one;");
    t.line("DROP TABLE one;");
    t.wait_for("'one' is a view: DROP VIEW one");
    let screen = wait_for_query(&mut t, "out", "|    2000 |");
    assert!(
        screen
            .contains("| name | state   | epoch | rows_in | rows_out | bad_rows | rows_per_sec | watermark"),
        "{screen}"
    );
    assert!(
        screen.contains("| out  | running |     1 |    2000 |        9 |"),
        "{screen}"
    );
    assert!(
        screen.contains("2026-01-01 00:01:37.950"),
        "the watermark: {screen}"
    );

    t.line("STOP QUERY out;");
    t.wait_for("stopped query out (committed through epoch 1); INSERT it again to resume");
    wait_for_query(&mut t, "out", "| stopped |");

    // The sink's committed files, as a batch query printed as a table.
    t.clear();
    t.line("SELECT window_start, n, s FROM out ORDER BY window_start;");
    let screen = t.wait_for("(9 rows)");
    let oracle = batch_query(&bids, WINDOWS_ORACLE);
    let expected: Vec<Vec<String>> = oracle[..9]
        .iter()
        .map(|r| {
            let c = cells(r);
            vec![c[0].clone(), c[2].clone(), c[3].clone()]
        })
        .collect();
    assert_eq!(table_rows(&screen), expected, "{screen}");
    assert_eq!(sink_rows(&ws.path("out")).len(), 9);
    t.prompt();
    t.send(CTRL_D);
    assert_eq!(t.wait_exit(), 0);

    // A new session: the same INSERT resumes from the checkpoint; leaving
    // stops it cleanly after its epoch.
    let mut t = Term::spawn(&ws, &["-i", "init.sql"]);
    t.wait_for("weir> ");
    t.line(&format!("INSERT INTO out {WINDOWS};"));
    t.wait_for("started query out (checkpoint .weir/checkpoints/out, resuming after epoch 1)");
    // Before an epoch runs here, it shows the watermark it resumed at (it
    // showed NULL, and 0 state rows, as if the state were lost).
    let screen = wait_for_query(&mut t, "out", "2026-01-01 00:01:37.950");
    assert!(
        screen.contains("| out  | running |     1 |       0 |"),
        "{screen}"
    );
    t.line("\\q");
    t.wait_for("stopped query out (committed through epoch 1); INSERT it again to resume");
    assert_eq!(t.wait_exit(), 0);
    assert_eq!(sink_rows(&ws.path("out")).len(), 9, "nothing written twice");
}

#[test]
fn the_shell_serves_its_queries_metrics() {
    let (ws, _) = workspace();
    let mut t = Term::spawn(&ws, &["-i", "init.sql"]);
    t.wait_for("weir> ");
    t.line("SET metrics = ':0';");
    let screen = t.wait_for("SET (metrics at http://127.0.0.1:");
    let addr = metrics_addr(&screen).unwrap();
    t.line(&format!("INSERT INTO out {WINDOWS};"));
    t.wait_for("started query out");
    let src = "{query=\"out\",source=\"bids\"}";
    let deadline = Instant::now() + TIMEOUT;
    let text = loop {
        let (status, text) = http_get(&addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        if metric(&text, &format!("weir_source_rows_total{src}")) == Some(2000.0) {
            break text;
        }
        assert!(Instant::now() < deadline, "no rows counted:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        metric(&text, "weir_sink_rows_total{query=\"out\",sink=\"out\"}"),
        Some(sink_rows(&ws.path("out")).len() as f64)
    );
    promtool_check(&text);
    t.line("SET;");
    t.wait_until("the metrics setting", |s| {
        s.lines()
            .any(|l| l.starts_with("| metrics ") && l.contains(&addr))
    });
    t.line("SET metrics = off;");
    t.wait_for("SET (metrics off)");
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "still serving at {addr}"
    );
    t.line("\\q");
    assert_eq!(t.wait_exit(), 0);
}

#[test]
fn weir_run_shows_progress_on_a_terminal_only() {
    let (ws, _) = workspace();
    ws.write(
        "job.sql",
        &format!(
            "{}INSERT INTO out {WINDOWS};",
            DECLARE.replace(
                "'format' = 'parquet');\nCREATE",
                "'format' = 'parquet', 'max_rows_per_batch' = '100');\nCREATE"
            )
        ),
    );
    let t = Term::spawn(&ws, &["run", "job.sql", "--trigger", "available-now", "--drain"]);
    assert_eq!(t.wait_exit(), 0);
    let raw = t.raw();
    assert!(raw.contains("epoch 20  in 100"), "{raw}");
    assert!(
        raw.contains(" rows in  ") && raw.contains(" rows/s"),
        "no progress line:\n{raw}"
    );
    // The input is bounded (available-now): a bar of the bytes read of
    // those known, with an ETA.
    assert!(
        raw.contains(" KiB/") && raw.contains("ETA "),
        "no progress bar:\n{raw}"
    );

    // Without a terminal: the epoch lines only.
    std::fs::remove_dir_all(ws.path("out")).unwrap();
    std::fs::remove_dir_all(ws.path("job.checkpoint")).unwrap();
    let run = ws
        .weir(&["run", "job.sql", "--trigger", "available-now", "--drain"])
        .ok();
    let err = run.stderr();
    assert!(err.contains("epoch 20  in 100"), "{err}");
    assert!(
        !err.contains(" rows in  ") && !err.contains('\x1b') && !err.contains('\r'),
        "{err:?}"
    );
}

#[test]
fn a_file_runs_as_the_shell_would_and_stops_at_the_first_error() {
    let (ws, bids) = workspace();
    ws.write(
        "load.sql",
        &format!(
            "-- process what is there, close every window, and show the result\n\
             {DECLARE}SET trigger = 'available-now';\nSET drain = true;\n\
             INSERT INTO out {WINDOWS};\n"
        ),
    );
    let run = ws.weir(&["-f", "load.sql"]).ok();
    assert!(run.stdout().contains("started query out"), "{}", run.stdout());
    assert!(run.stderr().contains("query out finished"), "{}", run.stderr());
    assert_eq!(sink_rows(&ws.path("out")), batch_query(&bids, WINDOWS_ORACLE));

    // Piped input, as CSV.
    let run = ws
        .weir_input(
            &["--format", "csv"],
            &format!("{DECLARE}SELECT COUNT(*) AS windows, SUM(n) AS bids FROM out;"),
        )
        .ok();
    assert!(
        run.stdout().ends_with("windows,bids\n10,2000\n"),
        "{}",
        run.stdout()
    );
    // A view that reads no stream (constants, a sink, a view of those) is
    // a batch query: a view of constants ran live, showed nothing, and
    // never ended, even with LIMIT.
    let run = ws
        .weir_input(
            &["--format", "csv"],
            &format!(
                "{DECLARE}CREATE VIEW one AS SELECT 1 AS one;
CREATE VIEW busy AS SELECT * FROM out WHERE n > 0;
                 CREATE VIEW both_ AS SELECT COUNT(*) AS windows, MAX(one) AS one FROM busy, one;
                 SELECT * FROM one LIMIT 1;
SELECT * FROM both_;"
            ),
        )
        .ok();
    assert!(
        run.stdout()
            .contains("declared view one (it reads no stream: SELECT from it runs once")
            && run.stdout().ends_with("one\n1\nwindows,one\n10,1\n"),
        "{}",
        run.stdout()
    );
    // A view read by one declared before it (dropped and declared again)
    // is registered first; a table may not take a view's name.
    let run = ws
        .weir_input(
            &["--format", "csv"],
            "CREATE VIEW v1 AS SELECT 1 AS x;\nCREATE VIEW v2 AS SELECT x + 1 AS y FROM v1;\nDROP VIEW v1;\n\
             CREATE VIEW v1 AS SELECT 5 AS x;\nSELECT * FROM v2;\n\
             CREATE TABLE v1 WITH ('connector' = 'files', 'path' = 'v1/', 'format' = 'parquet');",
        )
        .fails();
    assert!(run.stdout().ends_with("y\n6\n"), "{}", run.stdout());
    assert!(
        run.stderr()
            .contains("'v1' is already declared, as a view (DROP VIEW v1 first"),
        "{}",
        run.stderr()
    );

    // The first error stops the file, naming where it is; later statements
    // do not run.
    ws.write(
        "bad.sql",
        "SELECT 1 AS first;\n\nSELECT nope\n  FROM nowhere;\nSELECT 3 AS third;\n",
    );
    let run = ws.weir(&["-f", "bad.sql"]).fails();
    assert!(run.stdout().contains("first"), "{}", run.stdout());
    assert!(!run.stdout().contains("third"), "{}", run.stdout());
    let err = run.stderr();
    assert!(err.starts_with("error: bad.sql:3: "), "{err}");
    assert!(err.lines().count() <= 2, "{err}");

    // `weir query` prints one result, for scripts.
    let run = ws
        .weir(&["query", "SELECT COUNT(*) AS n FROM 'out/'", "--format", "json"])
        .ok();
    assert_eq!(run.stdout(), "{\"n\":10}\n");
}

#[test]
fn a_background_query_that_fails_fails_the_file_with_its_reason() {
    let (ws, _) = workspace();
    // Text where Parquet is declared.
    ws.write("in/c.parquet", "auction,price\n1,2\n");
    ws.write(
        "load.sql",
        &format!("{DECLARE}SET trigger = 'available-now';\nINSERT INTO out {WINDOWS};\nSELECT 1 AS after;\n"),
    );
    let run = ws.weir(&["-f", "load.sql"]).fails();
    assert!(
        run.stdout().contains("| after |"),
        "the file runs on while the query works"
    );
    let err = run.stderr();
    assert!(
        err.contains("error: query out failed: ") && err.contains("c.parquet"),
        "{err}"
    );
}

/// Over a Kafka topic: a live `SELECT` shows windows as records arrive,
/// and `SHOW QUERIES` shows a background query's lag by partition.
#[test]
fn a_live_query_over_kafka_shows_rows_as_records_arrive() {
    let Some(broker) = crate::common::kafka::Broker::any() else {
        return;
    };
    let ws = Workspace::new();
    let bids = gen_bids(12, 2000, BASE_MS, 0);
    broker.create_topic("shell-bids", 2);
    crate::common::kafka::produce_bids(&broker, "shell-bids", 2, &bids[..1000]);
    ws.write(
        "init.sql",
        &format!(
            "CREATE TABLE bids (auction BIGINT, price BIGINT, date_time TIMESTAMP(3),
               WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND)
               WITH ('connector' = 'kafka', 'topic' = 'shell-bids',
                     'properties.bootstrap.servers' = '{}', 'format' = 'json');
             CREATE TABLE out WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet');",
            broker.addr
        ),
    );
    let mut t = Term::spawn(&ws, &["-i", "init.sql"]);
    t.wait_for("weir> ");
    t.clear();
    t.line(&format!("{WINDOWS};"));
    // The first 1,000 bids cover 50 s: four windows closed.
    t.wait_until("four windows", |s| table_rows(s).len() == 4);
    // More records arrive; their windows show without a new query.
    crate::common::kafka::produce_bids(&broker, "shell-bids", 2, &bids[1000..]);
    t.wait_until("nine windows", |s| table_rows(s).len() == 9);
    t.send(CTRL_C);
    let screen = t.wait_for("rows; stopped)");
    let oracle = batch_query(&bids, WINDOWS_ORACLE);
    let closed: Vec<Vec<String>> = oracle[..9].iter().map(|r| cells(r)).collect();
    assert_eq!(table_rows(&screen), closed, "{screen}");
    // In the background, with its lag by partition.
    t.line(&format!("INSERT INTO out {WINDOWS};"));
    t.wait_for("started query out");
    let screen = wait_for_query(&mut t, "out", "|    2000 |");
    assert!(screen.contains("shell-bids/0=0, shell-bids/1=0"), "{screen}");
    t.line("STOP QUERY out;");
    t.wait_for("stopped query out");
    t.prompt();
    t.send(CTRL_D);
    assert_eq!(t.wait_exit(), 0);
}

/// A script whose query runs under an interval trigger is stopped as
/// `weir run` is: on SIGTERM (how a service manager stops it) or SIGINT,
/// after the current epoch, its checkpoint's lease freed. It used to exit
/// at once, the query killed mid-epoch and its lease held, SIGTERM killing
/// it outright.
#[test]
fn a_script_under_an_interval_trigger_stops_after_its_epoch_on_a_signal() {
    let (ws, mut bids) = workspace();
    ws.write(
        "live.sql",
        &format!("{DECLARE}SET trigger = '100ms';\nINSERT INTO out {WINDOWS};\n"),
    );
    // Status 0, as `weir run`'s: stopping is how an interval trigger ends.
    for (i, (signal, code)) in [(libc::SIGTERM, 0), (libc::SIGINT, 0)].into_iter().enumerate() {
        // New input for each run, so that it commits an epoch with output.
        let more = gen_bids(20 + i as u64, 500, BASE_MS + 200_000 + i as i64 * 100_000, 0);
        write_parquet(&ws.path(&format!("in/more-{i}.parquet")), &more);
        bids.extend(more);
        let files_before = parquet_files(&ws.path("out")).len();
        let child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["-f", "live.sql"])
            .current_dir(ws.path(""))
            .env("HOME", ws.path(""))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run weir");
        // Running: its first epoch committed (the sink has a file).
        let started = Instant::now();
        while parquet_files(&ws.path("out")).len() == files_before {
            assert!(started.elapsed() < Duration::from_secs(60), "no output");
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: kill only sends a signal to the child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        let out = child.wait_with_output().expect("wait for weir");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{err}");
        assert!(
            err.contains("stopping out after the current epoch")
                && err.contains("stopped query out (committed through epoch"),
            "{err}"
        );
        let inspect = ws
            .weir(&["checkpoint", "inspect", ".weir/checkpoints/out"])
            .ok()
            .stdout();
        assert!(inspect.contains("lease      free"), "{inspect}");
    }
    // What was committed is carried on exactly once.
    ws.write(
        "drain.sql",
        &format!("{DECLARE}SET trigger = 'available-now';\nSET drain = true;\nINSERT INTO out {WINDOWS};\n"),
    );
    ws.weir(&["-f", "drain.sql"]).ok();
    assert_eq!(sink_rows(&ws.path("out")), batch_query(&bids, WINDOWS_ORACLE));
}

/// A changed INSERT that its checkpoint refuses names the shell's way out
/// (a sink of its own, or the job file run on the query's own checkpoint
/// with --fresh-state), not `weir run`'s advice as it stands (its default
/// checkpoint is not the shell's, and the sink's owner would refuse it).
#[test]
fn a_changed_insert_is_refused_with_the_shells_way_out() {
    let (ws, _) = workspace();
    let script = |window: &str| {
        format!(
            "{DECLARE}SET trigger = 'available-now';\nINSERT INTO out {};\n",
            WINDOWS.replace("INTERVAL '10' SECOND", window)
        )
    };
    ws.write("a.sql", &script("INTERVAL '10' SECOND"));
    ws.weir(&["-f", "a.sql"]).ok();
    ws.write("b.sql", &script("INTERVAL '20' SECOND"));
    let e = ws.weir(&["-f", "b.sql"]).fails().stderr();
    assert!(
        e.contains("made by a different query")
            && e.contains("In the shell, INSERT the changed query into a sink table of its own")
            && e.contains(".weir/checkpoints/out --fresh-state`")
            && !e.contains("give it its own --checkpoint"),
        "{e}"
    );
}

/// The shell checks a table's options at its CREATE TABLE, as `weir run`
/// checks a job's: an unknown one is refused there, naming the nearest,
/// and the name stays free to declare again. It used to be refused at the
/// first statement that used the table, whose line the error named.
#[test]
fn create_table_refuses_an_unknown_option_at_once() {
    let (ws, _) = workspace();
    let typo = "CREATE TABLE b2 (auction BIGINT) WITH ('connector' = 'files', 'path' = 'in/', \
                'format' = 'parquet', 'max_rows_per_bach' = '10');\n";
    let e = ws.weir_input(&[], typo).fails().stderr();
    assert!(
        e.starts_with("error: <stdin>:1: table 'b2': unknown option 'max_rows_per_bach' (did you mean 'max_rows_per_batch'?"),
        "{e}"
    );
    // Interactively the error is said and the right declaration goes in.
    let mut t = Term::spawn(&ws, &[]);
    t.line(typo.trim());
    t.wait_for("unknown option 'max_rows_per_bach'");
    t.line(&typo.trim().replace("bach", "batch"));
    t.wait_for("declared b2 (1 column)");
    t.line("\\q");
    t.wait_exit();
}

/// A running query's dead-letter table is kept declared while it runs, as
/// its sources are (it was found from the query's text alone, which does
/// not name it).
#[test]
fn a_running_querys_dead_letter_table_is_not_dropped() {
    let (ws, _) = workspace();
    let mut t = Term::spawn(&ws, &["-i", "init.sql"]);
    t.wait_for("weir> ");
    t.line(
        "CREATE TABLE checked (auction BIGINT, price BIGINT, date_time TIMESTAMP(3)) WITH ('connector' = 'files', \
         'path' = 'in/', 'format' = 'parquet', 'on_error' = 'dead_letter', 'dead_letter' = 'bad_bids');",
    );
    t.line("CREATE TABLE bad_bids WITH ('connector' = 'files', 'path' = 'bad/', 'format' = 'parquet');");
    t.line("CREATE TABLE out2 WITH ('connector' = 'files', 'path' = 'out2/', 'format' = 'parquet');");
    t.line("INSERT INTO out2 SELECT auction, price FROM checked;");
    t.wait_for("started query out2");
    t.line("DROP TABLE bad_bids;");
    t.wait_for("query 'out2' reads 'bad_bids'; STOP QUERY out2 first");
    t.line("STOP QUERY out2;");
    t.wait_for("stopped query out2");
    t.line("DROP TABLE bad_bids;");
    t.wait_for("dropped bad_bids (its files stay where they are)");
    t.prompt();
    t.send(CTRL_D);
    assert_eq!(t.wait_exit(), 0);
}

/// A sink declared by a `file://` URL whose folder name holds a `#` is read
/// back from that folder: parsed as a URL, the `#` ended the path and the
/// shell's SELECT read folder `o` (another job's output) instead.
#[test]
fn a_select_over_a_file_url_sink_reads_its_own_folder() {
    let (ws, bids) = workspace();
    ws.write("o/decoy.parquet", "not this folder");
    let abs = ws.path("o#1");
    let declare = format!(
        "CREATE TABLE bids (auction BIGINT, price BIGINT, date_time TIMESTAMP(3))
           WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'parquet');
         CREATE TABLE o WITH ('connector' = 'files', 'path' = 'file://{}/', 'format' = 'parquet');",
        abs.display()
    );
    ws.write(
        "load.sql",
        &format!("{declare}\nSET trigger = 'available-now';\nINSERT INTO o SELECT auction, price FROM bids;"),
    );
    ws.weir(&["-f", "load.sql"]).ok();
    ws.write("q.sql", &format!("{declare}\nSELECT COUNT(*) AS n FROM o;"));
    let out = ws.weir(&["-f", "q.sql"]).ok().stdout();
    assert!(out.contains(&format!("| {} |", bids.len())), "{out}");
    // And `weir query` of the same URL.
    let sql = format!("SELECT COUNT(*) AS n FROM 'file://{}/'", abs.display());
    let out = ws.weir(&["query", "--format", "csv", &sql]).ok().stdout();
    assert_eq!(out, format!("n\n{}\n", bids.len()));
}
