//! Progress you can see: a spinner line on stderr while `weir run` works or
//! a batch query takes more than a moment (rows, rate, elapsed time). An
//! `available-now` run knows how much input there is, so its line is a bar:
//! bytes (or events, or files) read of those known, rows/s and ETA.
//!
//! Only on a terminal: when stderr is a file or a pipe, nothing of it is
//! written, and `weir run` writes its plain per-epoch lines alone, as before.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use weir_engine::{Amount, BatchProgress};

use crate::print::{group_digits, rate};

/// Whether stderr is a terminal someone watches.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

fn spinner(template: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// `weir run`'s progress: each epoch's line, and on a terminal a line below
/// them with the totals so far (a bar when the input is bounded).
pub struct RunProgress {
    bar: Option<ProgressBar>,
    /// Whether the run reads a bounded input (available-now), so the bar
    /// can show how much of it is read.
    bounded: bool,
    /// Whether the bar shows an amount yet (it spins until the first epoch
    /// tells how much input there is).
    measuring: bool,
    started: Instant,
    rows_in: u64,
}

/// What the bar counts: the first unit every source with input counts.
fn bar_amounts(p: &BatchProgress) -> Option<(&'static str, u64, u64)> {
    let pick = |unit: &'static str, f: fn(&Amount) -> Option<u64>| {
        let mut read = 0;
        let mut unread = 0;
        for b in p.sources.iter().filter_map(|s| s.backlog.as_ref()) {
            read += f(&b.read)?;
            unread += f(&b.unread)?;
        }
        (read + unread > 0).then_some((unit, read, read + unread))
    };
    pick("bytes", |a| a.bytes)
        .or_else(|| pick("events", |a| a.events))
        .or_else(|| pick("files", |a| a.files))
}

impl RunProgress {
    /// Progress on stderr; the spinner or bar only when stderr is a
    /// terminal. `bounded`: the run reads the input there now, then ends.
    pub fn new(bounded: bool) -> Self {
        let bar = stderr_is_terminal().then(|| {
            let bar = spinner("{spinner} {elapsed_precise}  {msg}");
            bar.set_draw_target(ProgressDrawTarget::stderr());
            bar.set_message("waiting for the first epoch");
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self {
            bar,
            bounded,
            measuring: false,
            started: Instant::now(),
            rows_in: 0,
        }
    }

    /// A line for the log (above the spinner, if any).
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => errln!("{line}"),
        }
    }

    /// An epoch ended: its line, and new totals.
    pub fn epoch(&mut self, line: &str, p: &BatchProgress) {
        self.println(line);
        self.rows_in += p.rows_in;
        let Some(bar) = &self.bar else { return };
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let totals = format!(
            "epoch {}  {} rows in  {} rows/s",
            p.epoch,
            group_digits(self.rows_in),
            rate(self.rows_in as f64 / secs)
        );
        if let Some((unit, read, known)) = bar_amounts(p).filter(|_| self.bounded) {
            if !self.measuring {
                self.measuring = true;
                let amount = match unit {
                    "bytes" => "{binary_bytes}/{binary_total_bytes}",
                    _ => "{human_pos}/{human_len} {prefix}",
                };
                let template = format!("{{wide_bar}} {amount}  {{msg}}  ETA {{eta}}");
                if let Ok(style) = ProgressStyle::with_template(&template) {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar.set_prefix(unit);
            }
            bar.set_length(known);
            bar.set_position(read);
        }
        bar.set_message(totals);
    }
}

impl Drop for RunProgress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// What a batch query shows while it runs: nothing for the first moment
/// (most queries are done by then), then rows so far, rate and elapsed time.
pub struct QuerySpinner {
    bar: ProgressBar,
    /// Set when the query is done, so a late start does not draw.
    done: Arc<Mutex<bool>>,
    started: Instant,
    rows: u64,
}

/// How long a query runs before its spinner appears.
const SPINNER_DELAY: Duration = Duration::from_millis(300);

impl QuerySpinner {
    /// A spinner that appears after a moment if `show` (a terminal).
    pub fn start(show: bool) -> Self {
        let bar = spinner("{spinner} {msg}  {elapsed}");
        bar.set_message("running");
        let done = Arc::new(Mutex::new(false));
        if show {
            let (bar, done) = (bar.clone(), Arc::clone(&done));
            tokio::spawn(async move {
                tokio::time::sleep(SPINNER_DELAY).await;
                let done = done.lock().unwrap_or_else(|e| e.into_inner());
                if !*done {
                    bar.set_draw_target(ProgressDrawTarget::stderr());
                    bar.enable_steady_tick(Duration::from_millis(100));
                }
            });
        }
        Self {
            bar,
            done,
            started: Instant::now(),
            rows: 0,
        }
    }

    /// Runs `f` with the spinner off the screen (to print results).
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.bar.suspend(f)
    }

    /// More rows arrived.
    pub fn add_rows(&mut self, n: u64) {
        self.rows += n;
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        self.bar.set_message(format!(
            "{} rows  {} rows/s",
            group_digits(self.rows),
            rate(self.rows as f64 / secs)
        ));
    }
}

impl Drop for QuerySpinner {
    fn drop(&mut self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.bar.finish_and_clear();
    }
}
