//! Retention: what no restorable epoch needs any more is deleted.

use super::*;

impl StreamingJob {
    /// Deletes what no epoch from `newest - retain + 1` on needs: older
    /// offsets and commits, sink manifests, and state files before the
    /// snapshot those epochs restore from.
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
        for op in self.checkpoint.state_operators().await? {
            self.checkpoint.prune_state(&op, keep_from).await?;
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
