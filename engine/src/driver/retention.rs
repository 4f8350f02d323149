//! Retention: what no restorable epoch needs any more is deleted.

use super::*;

impl StreamingJob {
    /// Deletes what no epoch from `newest - retain + 1` on needs: older
    /// offsets and commits, sink manifests, and state files older than
    /// any that those epochs' commits name.
    ///
    /// A drained checkpoint keeps every epoch from the one before its drain
    /// on: that epoch is the way back the warning of a later run names
    /// (`weir checkpoint rollback --to D-1`), and rolling back to it takes
    /// every later epoch's output back, so each of their manifests is
    /// needed. Rows read after a drain would otherwise be lost for good once
    /// `checkpoint.retain_epochs` late-only epochs had passed.
    pub(super) async fn retain(&self, newest: u64) -> Result<()> {
        let mut keep_from = (newest + 1).saturating_sub(self.retain_epochs).max(1);
        let drained = !self.watermarks.is_empty() && self.watermarks.values().all(|&w| w == i64::MAX);
        if drained && let Some(d) = self.drain_epoch().await? {
            keep_from = keep_from.min(d.saturating_sub(1).max(1));
        }
        use std::sync::atomic::Ordering::Relaxed;
        if keep_from <= self.pruned_to.load(Relaxed) {
            return Ok(());
        }
        for e in self
            .checkpoint
            .commits
            .epochs()
            .await?
            .into_iter()
            .filter(|&e| e < keep_from)
        {
            self.checkpoint.commits.delete(e).await?;
        }
        for e in self
            .checkpoint
            .offsets
            .epochs()
            .await?
            .into_iter()
            .filter(|&e| e < keep_from)
        {
            self.checkpoint.offsets.delete(e).await?;
        }
        // What commit `keep_from` names is the oldest any retained epoch
        // needs (a later commit's files start there or after). A commit
        // that names no files (an earlier Weir's) leaves it to the listing.
        let listed = match self.checkpoint.commits.read(keep_from).await? {
            Some(c) => self.metadata.state_listing(&c),
            None => None,
        };
        for op in self.checkpoint.state_operators().await? {
            match &listed {
                Some(map) => {
                    // A table it does not name held nothing then: its files
                    // begin with a snapshot after it.
                    let base = map
                        .get(&op)
                        .and_then(|c| c.shards.iter().filter_map(|s| s.first()).min().copied())
                        .unwrap_or(keep_from);
                    self.checkpoint.prune_state_before(&op, base).await?;
                }
                None => {
                    self.checkpoint.prune_state(&op, keep_from).await?;
                }
            }
        }
        for p in &self.pipelines {
            p.sink.prune(keep_from).await?;
        }
        for s in self.side_sinks() {
            s.prune(keep_from).await?;
        }
        self.pruned_to.store(keep_from, Relaxed);
        Ok(())
    }

    /// The epoch that drained the checkpoint: the newest offsets entry
    /// with `drain` whose watermarks at its start were not yet at the end
    /// of time (a `--drain` run on a drained checkpoint starts there
    /// already, and rolling back before it would not undo the drain).
    /// `None` when the newest entries are not drained, or the drain is no
    /// longer retained. Found once per run: only a rollback, which needs
    /// the checkpoint's lease, changes it.
    pub(super) async fn drain_epoch(&self) -> Result<Option<u64>> {
        let found = self
            .drain_epoch
            .get_or_try_init(|| async {
                for e in self.checkpoint.offsets.epochs().await?.into_iter().rev() {
                    let Some(entry) = self.checkpoint.offsets.read(e).await? else {
                        continue;
                    };
                    let started_drained = !entry.watermarks_in.is_empty()
                        && entry.watermarks_in.values().all(|&w| w == i64::MAX);
                    if !started_drained {
                        return Ok::<_, Error>(entry.drain.then_some(e));
                    }
                }
                Ok(None)
            })
            .await?;
        Ok(*found)
    }
}
