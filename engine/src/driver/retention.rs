//! Retention: what no restorable epoch needs any more is deleted.

use super::*;

impl StreamingJob {
    /// Deletes what no epoch from `newest - retain + 1` on needs: older
    /// offsets and commits, sink manifests, and state files older than
    /// any that those epochs' commits name.
    pub(super) async fn retain(&self, newest: u64) -> Result<()> {
        let keep_from = (newest + 1).saturating_sub(self.retain_epochs).max(1);
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
        Ok(())
    }
}
