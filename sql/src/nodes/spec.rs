//! Window kinds and their parameters (TUMBLE, HOP, CUMULATE, SESSION), and
//! where a window's watermark comes from.

use super::*;

/// A window kind and its parameters (all in ms).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WindowSpec {
    /// Fixed-size, non-overlapping windows `[start, start + size)` with
    /// `start ≡ offset (mod size)`.
    Tumble {
        /// Window length.
        size_ms: i64,
        /// Shift of window boundaries from the epoch.
        offset_ms: i64,
    },
    /// Windows of `size` starting every `slide` (`start ≡ offset mod slide`);
    /// `size` is a multiple of `slide`.
    Hop {
        /// Distance between window starts.
        slide_ms: i64,
        /// Window length.
        size_ms: i64,
        /// Shift of window boundaries from the epoch.
        offset_ms: i64,
    },
    /// Windows growing by `step` from the start of each `size` period:
    /// `[s, s + step)`, `[s, s + 2 step)`, ..., `[s, s + size)`.
    Cumulate {
        /// Growth step.
        step_ms: i64,
        /// Largest window (the period); a multiple of `step`.
        size_ms: i64,
        /// Shift of period boundaries from the epoch.
        offset_ms: i64,
    },
    /// Per key, a window spans rows whose event times are less than `gap`
    /// apart: `[first row, last row + gap)`.
    Session {
        /// The inactivity gap that ends a session.
        gap_ms: i64,
    },
}

fn floor_to(t: i64, step: i64, offset: i64) -> i64 {
    t - (t - offset).rem_euclid(step)
}

impl WindowSpec {
    /// The start of the tumbling window holding event time `t`.
    pub fn tumble_start(t: i64, size_ms: i64, offset_ms: i64) -> i64 {
        floor_to(t, size_ms, offset_ms)
    }

    /// The slice length of sliced windows (`None` for sessions).
    pub fn slice_ms(&self) -> Option<i64> {
        match self {
            WindowSpec::Tumble { size_ms, .. } => Some(*size_ms),
            WindowSpec::Hop { slide_ms, .. } => Some(*slide_ms),
            WindowSpec::Cumulate { step_ms, .. } => Some(*step_ms),
            WindowSpec::Session { .. } => None,
        }
    }

    /// The start of the slice holding event time `t`.
    pub fn slice_start(&self, t: i64) -> i64 {
        match self {
            WindowSpec::Tumble { size_ms, offset_ms } => floor_to(t, *size_ms, *offset_ms),
            WindowSpec::Hop {
                slide_ms, offset_ms, ..
            } => floor_to(t, *slide_ms, *offset_ms),
            WindowSpec::Cumulate {
                step_ms, offset_ms, ..
            } => floor_to(t, *step_ms, *offset_ms),
            WindowSpec::Session { .. } => t,
        }
    }

    /// The windows (start, end) containing the slice that starts at `p`,
    /// in order of their end.
    pub fn windows_of_slice(&self, p: i64) -> Vec<(i64, i64)> {
        match self {
            WindowSpec::Tumble { size_ms, .. } => vec![(p, p + size_ms)],
            WindowSpec::Hop {
                slide_ms, size_ms, ..
            } => {
                let n = size_ms / slide_ms;
                (0..n)
                    .rev()
                    .map(|k| (p - k * slide_ms, p - k * slide_ms + size_ms))
                    .collect()
            }
            WindowSpec::Cumulate {
                step_ms,
                size_ms,
                offset_ms,
            } => {
                let base = floor_to(p, *size_ms, *offset_ms);
                let mut out = Vec::new();
                let mut end = p + step_ms;
                while end <= base + size_ms {
                    out.push((base, end));
                    end += step_ms;
                }
                out
            }
            WindowSpec::Session { gap_ms } => vec![(p, p + gap_ms)],
        }
    }

    /// The windows containing event time `t`, in order of their end.
    pub fn windows_of(&self, t: i64) -> Vec<(i64, i64)> {
        self.windows_of_slice(self.slice_start(t))
    }

    /// The starts of the slices making up window `[start, end)`.
    pub fn slices_of_window(&self, start: i64, end: i64) -> Vec<i64> {
        match self.slice_ms() {
            Some(step) => (start..end).step_by(step as usize).collect(),
            None => vec![start],
        }
    }

    /// When the slice starting at `p` is no longer needed: the end of the
    /// last window containing it.
    pub fn slice_retires_at(&self, p: i64) -> i64 {
        self.windows_of_slice(p).last().map_or(p, |w| w.1)
    }

    /// The largest window, ms (for sessions, unknown).
    pub fn max_size_ms(&self) -> Option<i64> {
        match self {
            WindowSpec::Tumble { size_ms, .. }
            | WindowSpec::Hop { size_ms, .. }
            | WindowSpec::Cumulate { size_ms, .. } => Some(*size_ms),
            WindowSpec::Session { .. } => None,
        }
    }

    /// Whether a window aggregate over it benefits from slices (windows overlap).
    pub fn overlaps(&self) -> bool {
        matches!(self, WindowSpec::Hop { .. } | WindowSpec::Cumulate { .. })
    }

    /// The SQL name of the window kind.
    pub fn kind(&self) -> &'static str {
        match self {
            WindowSpec::Tumble { .. } => "TUMBLE",
            WindowSpec::Hop { .. } => "HOP",
            WindowSpec::Cumulate { .. } => "CUMULATE",
            WindowSpec::Session { .. } => "SESSION",
        }
    }
}

impl fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let offset = |f: &mut fmt::Formatter<'_>, o: i64| {
            if o != 0 {
                write!(f, ", offset={}", fmt_ms(o))
            } else {
                Ok(())
            }
        };
        match self {
            WindowSpec::Tumble { size_ms, offset_ms } => {
                write!(f, "TUMBLE(size={}", fmt_ms(*size_ms))?;
                offset(f, *offset_ms)?;
            }
            WindowSpec::Hop {
                slide_ms,
                size_ms,
                offset_ms,
            } => {
                write!(f, "HOP(slide={}, size={}", fmt_ms(*slide_ms), fmt_ms(*size_ms))?;
                offset(f, *offset_ms)?;
            }
            WindowSpec::Cumulate {
                step_ms,
                size_ms,
                offset_ms,
            } => {
                write!(f, "CUMULATE(step={}, size={}", fmt_ms(*step_ms), fmt_ms(*size_ms))?;
                offset(f, *offset_ms)?;
            }
            WindowSpec::Session { gap_ms } => write!(f, "SESSION(gap={}", fmt_ms(*gap_ms))?,
        }
        f.write_str(")")
    }
}

/// `10s`, `1500ms`, `2m`: durations as people write them.
pub fn fmt_ms(ms: i64) -> String {
    const UNITS: [(i64, &str); 4] = [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1000, "s")];
    for (n, unit) in UNITS {
        if ms != 0 && ms % n == 0 {
            return format!("{}{unit}", ms / n);
        }
    }
    format!("{ms}ms")
}

/// The type of `window_start` / `window_end` / `window_time`: milliseconds,
/// in the time column's time zone (Flink's `TIMESTAMP(3)`).
pub fn window_type(time_type: &DataType) -> DataType {
    let tz = match time_type {
        DataType::Timestamp(_, tz) => tz.clone(),
        _ => None,
    };
    DataType::Timestamp(TimeUnit::Millisecond, tz)
}

/// Where a window's notion of "late" and "complete" comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WatermarkOrigin {
    /// The time column is a source's watermark column. A row is late when it
    /// is older than the source's running watermark when it arrives (the
    /// largest event time read before it, minus the delay), which does not
    /// depend on how the input was cut into epochs.
    Source {
        /// The source table.
        source: String,
        /// Its watermark delay, ms.
        delay_ms: i64,
    },
    /// The time column comes from several sources (a `UNION ALL`). A row is
    /// late when it is older than the lowest of their watermarks at the
    /// start of the epoch.
    Sources(Vec<String>),
    /// The time column is a window column of an upstream windowed aggregate,
    /// which emits each row once, when it is final: no row is late. The
    /// watermark is the pipeline's, `lag_ms` behind.
    Upstream {
        /// How far this stream's watermark trails the pipeline's, ms.
        lag_ms: i64,
    },
}

impl WatermarkOrigin {
    /// How far windows over this origin trail the pipeline's watermark, ms.
    pub fn lag_ms(&self) -> i64 {
        match self {
            WatermarkOrigin::Upstream { lag_ms } => *lag_ms,
            _ => 0,
        }
    }
}

impl fmt::Display for WatermarkOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WatermarkOrigin::Source { source, delay_ms } => {
                write!(f, "source {source} (max event time - {})", fmt_ms(*delay_ms))
            }
            WatermarkOrigin::Sources(s) => write!(f, "lowest of sources {}", s.join(", ")),
            WatermarkOrigin::Upstream { lag_ms } => {
                write!(f, "upstream results (pipeline watermark - {})", fmt_ms(*lag_ms))
            }
        }
    }
}
