//! What `weir` takes from its environment: the host's name (for the
//! checkpoint lease), store settings (`AWS_*`), injected storage faults
//! (`WEIR_FAULTS`) and crash points (`WEIR_FAILPOINT`) for tests.

use anyhow::{Context, Result};
use weir_engine::{EpochHooks, Step};
use weir_storage::StoreOptions;

/// This machine's name, for the checkpoint lease's holder.
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Settings for S3 and friends from the environment (`AWS_*`), and injected
/// storage faults (`WEIR_FAULTS`).
pub fn store_options_from_env() -> Result<StoreOptions> {
    let mut pairs: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("AWS_"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    pairs.extend(fault_options_from_env()?);
    Ok(StoreOptions::new(pairs))
}

/// `WEIR_FAULTS=rate=0.2,latency_ms=2,seed=7,permanent=commits/`: every
/// store `weir` opens fails that fraction of operations transiently, adds
/// that latency, and fails objects under that prefix on every attempt
/// (`weir_storage::faults`). For tests of retries and recovery.
fn fault_options_from_env() -> Result<Vec<(String, String)>> {
    match std::env::var("WEIR_FAULTS") {
        Ok(spec) => weir_storage::faults::FaultConfig::options_from_spec(&spec)
            .map_err(|e| anyhow::anyhow!("WEIR_FAULTS='{spec}': {e}")),
        Err(_) => Ok(Vec::new()),
    }
}

/// `WEIR_FAILPOINT=<step>@<epoch>`: the process kills itself with SIGKILL
/// when that epoch reaches that step. For crash tests; see `Step` for names.
pub struct Failpoint {
    step: Step,
    epoch: u64,
}

impl Failpoint {
    pub fn from_env() -> Result<Option<Failpoint>> {
        let Ok(spec) = std::env::var("WEIR_FAILPOINT") else {
            return Ok(None);
        };
        let (step, epoch) = spec
            .split_once('@')
            .with_context(|| format!("WEIR_FAILPOINT='{spec}': expected <step>@<epoch>"))?;
        let step = Step::from_name(step).with_context(|| {
            let names: Vec<&str> = Step::ALL.iter().map(|s| s.name()).collect();
            format!(
                "WEIR_FAILPOINT: unknown step '{step}' (steps: {})",
                names.join(", ")
            )
        })?;
        let epoch = epoch
            .parse()
            .with_context(|| format!("WEIR_FAILPOINT: bad epoch '{epoch}'"))?;
        Ok(Some(Failpoint { step, epoch }))
    }
}

impl EpochHooks for Failpoint {
    fn reached(&self, step: Step, epoch: u64) -> weir_engine::Result<()> {
        if step == self.step && epoch == self.epoch {
            // SIGKILL, as `kill -9` would: no destructors, no flushing.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
        Ok(())
    }
}

pub struct NoHooks;
impl EpochHooks for NoHooks {
    fn reached(&self, _: Step, _: u64) -> weir_engine::Result<()> {
        Ok(())
    }
}
