//! Panics, reported once, with where they happened.
//!
//! A panic inside an epoch (a bug in an operator, Weir's or DataFusion's)
//! is caught where the epoch runs and becomes an error that names the
//! operator and the epoch (`exec::guarded`, the driver's `run_plan`). Rust's
//! default hook would print the panic a first time, with a note on
//! backtraces, before that error prints it again; [`install_hook`] makes
//! the hook keep the panic's place instead, for the error to name.

use std::sync::Mutex;

/// Where the last panic happened (`file:line:column`).
static LAST_LOCATION: Mutex<Option<String>> = Mutex::new(None);

/// Replaces the default panic hook with one that prints nothing and keeps
/// the panic's location for [`message`]. For a program that catches and
/// reports panics itself (the `weir` binary does, around `main` too).
pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        if let Some(l) = info.location() {
            *LAST_LOCATION.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(format!("{}:{}:{}", l.file(), l.line(), l.column()));
        }
    }));
}

/// A caught panic's message, with where it happened when the hook knows.
pub fn message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    match LAST_LOCATION.lock().unwrap_or_else(|p| p.into_inner()).take() {
        Some(at) => format!("{text} (at {at})"),
        None => text,
    }
}
