//! One writer per checkpoint (see [`weir_storage::lease`] for the layout).
//!
//! A job takes the lease when it opens its checkpoint and keeps renewing it
//! in the background; it checks it before every commit. A second job on the
//! same checkpoint is refused with a message naming the holder. The lease of
//! a holder that stopped without letting go lapses after its TTL, or at once
//! when the holder ran on this host and its process is gone (`kill -9`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use weir_storage::Checkpoint;
use weir_storage::lease::LeaseRecord;

use crate::{Error, Result};

/// Who is running a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseOwner {
    /// The host name.
    pub host: String,
    /// The process id.
    pub pid: u32,
}

impl LeaseOwner {
    /// This process on a host.
    pub fn this_process(host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            pid: std::process::id(),
        }
    }
}

/// Checkpoints whose lease a live job of this process holds. A lease
/// recorded for this process but absent here was held by a job that was
/// dropped without letting go (a failed job): it can be taken over.
static HELD: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Default::default);

fn held() -> std::sync::MutexGuard<'static, HashSet<String>> {
    HELD.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Whether a process of this host is running (Linux: `/proc/<pid>`). A
/// zombie (killed, not yet reaped by its parent: a shell that ran
/// `kill -9` and the job again at once) is not: its state in
/// `/proc/<pid>/stat` is `Z` (or `X`, dead).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) state ...`; comm may hold spaces and parentheses.
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next()),
            Some("Z" | "X")
        ),
        Err(_) => std::path::Path::new(&format!("/proc/{pid}")).exists(),
    }
}

/// A held lease. Dropping it stops the renewals (the lease then lapses);
/// [`Lease::release`] lets go at once.
pub struct Lease {
    checkpoint: Checkpoint,
    url: String,
    record: Mutex<LeaseRecord>,
    lost: Arc<AtomicBool>,
    renewals: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Until when no other process can have taken the lease over, by this
    /// process's monotonic clock (which runs on while the process is
    /// stopped, not while the machine sleeps: [`Lease::ensure`] checks
    /// the wall clock too): two thirds of the TTL after the last write of
    /// its expiry began, the rest a margin for other hosts' clocks.
    safe_until: Mutex<Instant>,
    ttl: Duration,
}

/// The part of a lease's TTL after a renewal in which this process takes
/// it as still its own without asking the store ([`Lease::ensure`]).
fn safe_for(ttl: Duration) -> Duration {
    ttl * 2 / 3
}

impl Lease {
    /// Takes the checkpoint's lease for `owner`, or explains who holds it.
    pub async fn acquire(checkpoint: &Checkpoint, owner: &LeaseOwner, ttl: Duration) -> Result<Arc<Lease>> {
        let url = checkpoint.location().url().to_string();
        if held().contains(&url) {
            return Err(Error::Checkpoint(format!(
                "the checkpoint at {url} is in use by another query of this process"
            )));
        }
        let current = checkpoint.current_lease().await?;
        if let Some(c) = &current {
            let same_process = c.host == owner.host && c.pid == owner.pid;
            // A holder is gone when it let go, its lease lapsed, it is this
            // process (a job dropped without letting go), or it ran on this
            // host and its process has ended.
            let holder_gone = c.released
                || c.expires_at_ms <= now_ms()
                || same_process
                || (c.host == owner.host && !process_alive(c.pid));
            if !holder_gone {
                let left = Duration::from_millis((c.expires_at_ms - now_ms()).max(0) as u64);
                return Err(Error::Checkpoint(format!(
                    "the checkpoint at {url} is in use by process {} on host {} (since {}); \
                     stop that job first, or if it died on another machine, wait {}s for its lease to lapse",
                    c.pid,
                    c.host,
                    c.acquired_at,
                    left.as_secs() + 1
                )));
            }
        }
        let began = Instant::now();
        let record = LeaseRecord {
            version: weir_storage::FORMAT_VERSION,
            generation: current.as_ref().map_or(1, |c| c.generation + 1),
            owner: uuid::Uuid::new_v4().simple().to_string(),
            host: owner.host.clone(),
            pid: owner.pid,
            acquired_at: chrono::Utc::now().to_rfc3339(),
            expires_at_ms: now_ms() + ttl.as_millis() as i64,
            released: false,
        };
        match checkpoint.create_lease(&record).await {
            Ok(()) => {}
            Err(weir_storage::Error::AlreadyExists { .. }) => {
                return Err(Error::Checkpoint(format!(
                    "another process took the lease of the checkpoint at {url} at the same moment; \
                     two jobs cannot share a checkpoint"
                )));
            }
            Err(e) => return Err(e.into()),
        }
        checkpoint.prune_leases(record.generation).await?;
        held().insert(url.clone());
        let lease = Arc::new(Lease {
            checkpoint: checkpoint.clone(),
            url,
            record: Mutex::new(record),
            lost: Arc::new(AtomicBool::new(false)),
            renewals: Mutex::new(None),
            safe_until: Mutex::new(began + safe_for(ttl)),
            ttl,
        });
        let task = tokio::spawn(renew_forever(Arc::downgrade(&lease), ttl));
        *lease.renewals.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        Ok(lease)
    }

    /// The lease's random id (its record's `owner`): another URL of the
    /// same checkpoint shows this id in its lease.
    pub fn id(&self) -> String {
        self.record().owner
    }

    fn record(&self) -> LeaseRecord {
        self.record.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Fencing: fails unless this process still holds the lease.
    pub async fn check(&self, what: &str) -> Result<()> {
        let mine = self.record();
        let lost = || {
            Error::Checkpoint(format!(
                "lost the lease of the checkpoint at {} (another process took it over); \
                 stopping without {what}",
                self.url
            ))
        };
        if self.lost.load(Ordering::SeqCst) {
            return Err(lost());
        }
        match self.checkpoint.lease_generations().await?.last() {
            Some(&g) if g == mine.generation => Ok(()),
            _ => {
                self.lost.store(true, Ordering::SeqCst);
                // Not ours any more: this process no longer holds it.
                held().remove(&self.url);
                Err(lost())
            }
        }
    }

    /// Fencing before a step that deletes or overwrites checkpoint files
    /// a commit may name (an epoch's state, a rollback): as
    /// [`Lease::check`], without a request to the store while the last
    /// renewal is recent enough that no other process can have taken the
    /// lease. A process that stalled past that (stopped, swapped out) asks
    /// the store: its replacement may have committed the epoch it is in.
    pub async fn ensure(&self, what: &str) -> Result<()> {
        let safe = *self.safe_until.lock().unwrap_or_else(|p| p.into_inner());
        let margin = (self.ttl - safe_for(self.ttl)).as_millis() as i64;
        if !self.lost.load(Ordering::SeqCst)
            && Instant::now() < safe
            && now_ms() < self.record().expires_at_ms - margin
        {
            return Ok(());
        }
        self.check(what).await
    }

    /// Renews the lease once (also done in the background).
    pub async fn renew(&self, ttl: Duration) -> Result<()> {
        self.check("renewing its lease").await?;
        let began = Instant::now();
        let mut rec = self.record();
        let before = rec.expires_at_ms;
        rec.expires_at_ms = now_ms() + ttl.as_millis() as i64;
        self.checkpoint.write_lease(&rec).await?;
        *self.record.lock().unwrap_or_else(|p| p.into_inner()) = rec;
        // Only a renewal written before the lease lapsed keeps it this
        // process's for sure: one that stalled past the expiry may have
        // been written after another process took it over (its write
        // goes to this generation's file, and succeeds).
        if now_ms() < before {
            *self.safe_until.lock().unwrap_or_else(|p| p.into_inner()) = began + safe_for(ttl);
        }
        Ok(())
    }

    /// Lets go of the lease, so another job may take it at once.
    pub async fn release(&self) -> Result<()> {
        self.stop_renewals();
        if self.check("releasing").await.is_ok() {
            let mut rec = self.record();
            rec.released = true;
            rec.expires_at_ms = now_ms();
            self.checkpoint.write_lease(&rec).await?;
        }
        held().remove(&self.url);
        Ok(())
    }

    fn stop_renewals(&self) {
        if let Some(t) = self.renewals.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop_renewals();
        held().remove(&self.url);
    }
}

async fn renew_forever(lease: std::sync::Weak<Lease>, ttl: Duration) {
    let every = (ttl / 3).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        let Some(lease) = lease.upgrade() else { return };
        if lease.renew(ttl).await.is_err() {
            // Lost, or the store failed: the next check before a commit
            // reports it; keep trying while the lease may still be ours.
            if lease.lost.load(Ordering::SeqCst) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child that exited but was not waited for is a zombie: not alive.
    #[test]
    fn a_zombie_is_not_alive() {
        assert!(process_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().expect("spawn true");
        let pid = child.id();
        let zombie = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z"))
        });
        assert!(zombie, "the child became a zombie");
        assert!(!process_alive(pid));
        child.wait().expect("reap");
        assert!(!process_alive(pid));
    }
}
