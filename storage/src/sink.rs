//! The file sink's layout and its two-step publish.
//!
//! A reader that globs `<sink>/**/*.parquet` must see exactly the committed
//! rows: never a partial file, never a file twice. So an epoch's output is
//! published in two steps around the commit:
//!
//! ```text
//!  epoch N:  stage    _weir/pending/<w>/part-N-<w>.parquet.pending   (not matched by *.parquet)
//!            manifest _weir/manifests/<w>/N.json                     (names the files of N)
//!            ... state, then commits/N ...
//!            publish  pending -> part-N-<w>.parquet                  (one atomic object each)
//! ```
//!
//! Staging is idempotent (a replay of N overwrites the same names with the
//! same bytes). Publishing is idempotent and is repeated on restart for the
//! last committed epoch, so a crash between the commit and the publish loses
//! nothing. `<w>` is the writer: the checkpoint's query id and the pipeline,
//! so two jobs (or a job restarted with a fresh checkpoint) never collide.

use bytes::Bytes;
use object_store::PutPayload;
use serde::{Deserialize, Serialize};

use crate::{Error, FORMAT_VERSION, Location, Result};

/// The version of a manifest that names files written in parts (with
/// [`ManifestFile::staged`]), and of the owner record of a folder that
/// holds such files. A Weir before it would not know those names (it would
/// neither publish nor roll them back), so it must refuse them: it refuses
/// any version above its own.
pub const PARTS_VERSION: u32 = 2;

/// One output file of an epoch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestFile {
    /// Name relative to the sink folder.
    pub name: String,
    /// Rows in the file.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// Where the file is staged until published, relative to the sink
    /// folder, when not at the writer's usual pending name. A file written
    /// on a cluster's executor is staged under a name of its own attempt
    /// (`<pending>.<attempt>.pending`, see [`SinkLayout::staged_part_name`]):
    /// a task that ran twice leaves two staged copies, and the manifest
    /// names the one the driver chose, so only that one is ever published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged: Option<String>,
}

/// `_weir/manifests/<writer>/<epoch>.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// Format version.
    pub version: u32,
    /// The epoch.
    pub epoch: u64,
    /// The files the epoch produced.
    pub files: Vec<ManifestFile>,
}

/// `_weir/owner.json`: which checkpoint's query writes a sink folder.
///
/// One folder, one owner. Two queries writing the same folder would mix
/// their rows, and a query restarted on a new checkpoint would write its
/// output a second time beside the first, so a sink records its owner
/// before its first output and refuses any other. The owner is a
/// checkpoint (its URL) and the query that made it (its id), since a
/// checkpoint deleted and made again at the same place is another query.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SinkOwner {
    /// Format version.
    pub version: u32,
    /// The owning checkpoint's URL.
    pub checkpoint: String,
    /// The query id in that checkpoint's metadata.
    pub query_id: String,
    /// The sink table's name in the owning job.
    pub table: String,
}

impl SinkOwner {
    /// Its name in the sink's folder.
    pub const NAME: &'static str = "_weir/owner.json";

    /// Whether `other` is the same owner: the same query (its id is random,
    /// made when its checkpoint was). The checkpoint's URL may differ (the
    /// folders moved, or an S3 URL spelled another way) and so may the
    /// table's name (renamed): the query is the same.
    pub fn same_as(&self, other: &SinkOwner) -> bool {
        self.query_id == other.query_id
    }

    /// The owner recorded in a sink folder, if any.
    pub async fn read(loc: &Location) -> Result<Option<SinkOwner>> {
        let Some(bytes) = loc.get(Self::NAME).await? else {
            return Ok(None);
        };
        let owner: SinkOwner = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
            url: loc.url_of(Self::NAME),
            epoch: None,
            reason: e.to_string(),
        })?;
        if owner.version > PARTS_VERSION {
            return Err(Error::FutureVersion {
                url: loc.url_of(Self::NAME),
                epoch: None,
                found: owner.version,
                supported: PARTS_VERSION,
            });
        }
        Ok(Some(owner))
    }

    /// Marks the folder as holding files written in parts (its owner record
    /// at [`PARTS_VERSION`]), before the first of them is staged, so that a
    /// Weir that does not know them refuses the folder. `self` must be the
    /// folder's owner.
    pub async fn mark_parts(&self, loc: &Location) -> Result<()> {
        if Self::read(loc).await?.is_some_and(|o| o.version >= PARTS_VERSION) {
            return Ok(());
        }
        let marked = SinkOwner {
            version: PARTS_VERSION,
            ..self.clone()
        };
        loc.put(Self::NAME, marked.encode(loc)?).await
    }

    /// Rewrites the folder's owner record, `found` (the same query), with
    /// `self`'s checkpoint URL: the checkpoint moved. The record keeps
    /// `found`'s version (whether the folder holds files in parts).
    pub async fn record_move(&self, loc: &Location, found: &SinkOwner) -> Result<()> {
        let moved = SinkOwner {
            version: found.version,
            ..self.clone()
        };
        loc.put(Self::NAME, moved.encode(loc)?).await
    }

    /// The record as stored in `loc`'s `_weir/owner.json`.
    fn encode(&self, loc: &Location) -> Result<Bytes> {
        serde_json::to_vec_pretty(self)
            .map(Bytes::from)
            .map_err(|e| Error::Corrupt {
                url: loc.url_of(Self::NAME),
                epoch: None,
                reason: e.to_string(),
            })
    }

    /// Records `self` as the folder's owner unless it has one. Returns the
    /// owner the folder has afterwards: `self`, or another that was there
    /// first (which the caller must refuse).
    pub async fn claim(&self, loc: &Location) -> Result<SinkOwner> {
        if let Some(existing) = Self::read(loc).await? {
            return Ok(existing);
        }
        match loc.put_if_absent(Self::NAME, self.encode(loc)?).await {
            Ok(()) => Ok(self.clone()),
            // Another writer claimed it between the read and the create.
            Err(Error::AlreadyExists { .. }) => Self::read(loc).await?.ok_or_else(|| Error::Corrupt {
                url: loc.url_of(Self::NAME),
                epoch: None,
                reason: "it vanished while being claimed".into(),
            }),
            Err(e) => Err(e),
        }
    }
}

/// Where one writer's files go in a sink folder.
#[derive(Clone, Debug)]
pub struct SinkLayout {
    loc: Location,
    writer: String,
}

impl SinkLayout {
    /// The layout for `writer` in the sink folder `loc`.
    pub fn new(loc: Location, writer: impl Into<String>) -> Self {
        Self {
            loc,
            writer: writer.into(),
        }
    }

    /// The sink folder.
    pub fn location(&self) -> &Location {
        &self.loc
    }

    /// The writer its files are named after.
    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// The published name of the epoch's output file.
    pub fn final_name(&self, epoch: u64) -> String {
        format!("part-{epoch:010}-{}.parquet", self.writer)
    }

    fn pending_name(&self, epoch: u64) -> String {
        format!("_weir/pending/{}/{}.pending", self.writer, self.final_name(epoch))
    }

    /// The published name of part `part` of an epoch written in parts (one
    /// file per part of its input, on a cluster's executors).
    pub fn final_part_name(&self, epoch: u64, part: usize) -> String {
        format!("part-{epoch:010}-{}-{part:05}.parquet", self.writer)
    }

    /// Where one attempt (`attempt`: letters and digits, unique per task
    /// run) stages part `part` of an epoch. Attempts never share a name,
    /// so a late write by an attempt the driver did not choose cannot
    /// replace the chosen one's bytes.
    pub fn staged_part_name(&self, epoch: u64, part: usize, attempt: &str) -> String {
        format!(
            "_weir/pending/{}/{}.{attempt}.pending",
            self.writer,
            self.final_part_name(epoch, part)
        )
    }

    /// The epoch of a name this writer gives a file: published
    /// (`part-<epoch>-<writer>[-<part>].parquet`) or staged (the same with
    /// `.pending`, or `.<attempt>.pending`, after it).
    fn epoch_of_file(&self, name: &str) -> Option<u64> {
        let rest = name.strip_prefix("part-")?;
        let (digits, tail) = rest.split_at_checked(10)?;
        let epoch: u64 = digits.parse().ok()?;
        let tail = tail.strip_prefix('-')?.strip_prefix(self.writer.as_str())?;
        let tail = match tail.strip_prefix('-') {
            Some(t) => {
                let (part, t) = t.split_at_checked(5)?;
                part.bytes().all(|b| b.is_ascii_digit()).then_some(t)?
            }
            None => tail,
        };
        let tail = tail.strip_prefix(".parquet")?;
        let attempt_ok = |a: &str| !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric());
        match tail.strip_suffix(".pending") {
            None if tail.is_empty() => Some(epoch),
            Some("") => Some(epoch),
            Some(t) => t.strip_prefix('.').filter(|a| attempt_ok(a)).map(|_| epoch),
            None => None,
        }
    }

    /// Checks a file written elsewhere for part `part` of an epoch before a
    /// manifest names it: its names are this writer's for that part, and
    /// the staged object is there with the size reported. A commit must
    /// never name a file this process cannot publish (an executor that
    /// wrote to another store than this one, or a report that lost its
    /// file), since a committed epoch is published again on every restart.
    pub async fn check_staged(&self, epoch: u64, part: usize, file: &ManifestFile) -> Result<()> {
        let bad = |reason: String| Error::Corrupt {
            url: self.loc.url_of(&file.name),
            epoch: Some(epoch),
            reason,
        };
        let name = self.final_part_name(epoch, part);
        let Some(staged) = &file.staged else {
            return Err(bad("a file written elsewhere has no staged name".into()));
        };
        let attempt = staged
            .strip_prefix(&format!("_weir/pending/{}/{name}.", self.writer))
            .and_then(|a| a.strip_suffix(".pending"))
            .unwrap_or("");
        if file.name != name || attempt.is_empty() || !attempt.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(bad(format!(
                "the file reported for part {part} is named {} (staged as {staged}), not as this sink's part",
                file.name
            )));
        }
        match self.loc.size(staged).await? {
            Some(size) if size == file.bytes => Ok(()),
            Some(size) => Err(bad(format!(
                "{staged} has {size} bytes where its writer reported {}",
                file.bytes
            ))),
            None => Err(bad(format!(
                "{staged} was reported written but is not in this sink folder (does every executor reach the same store as this process?)"
            ))),
        }
    }

    /// Records an epoch whose files were written elsewhere (staged under
    /// their [`ManifestFile::staged`] names): its manifest names exactly
    /// `files`, and none when it is empty. Safe to repeat, and a replay
    /// that chose other attempts replaces the manifest.
    pub async fn stage_files(&self, epoch: u64, files: Vec<ManifestFile>) -> Result<()> {
        if files.is_empty() {
            return self.loc.delete(&self.manifest_name(epoch)).await;
        }
        let manifest = Manifest {
            version: if files.iter().any(|f| f.staged.is_some()) {
                PARTS_VERSION
            } else {
                FORMAT_VERSION
            },
            epoch,
            files,
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Corrupt {
            url: self.loc.url_of(&self.manifest_name(epoch)),
            epoch: Some(epoch),
            reason: e.to_string(),
        })?;
        self.loc.put(&self.manifest_name(epoch), Bytes::from(json)).await
    }

    fn manifest_name(&self, epoch: u64) -> String {
        format!("_weir/manifests/{}/{epoch:020}.json", self.writer)
    }

    /// Stages the epoch's output (`None` when it produced no rows) and
    /// records it in the manifest. Safe to repeat.
    pub async fn stage(&self, epoch: u64, output: Option<(PutPayload, u64)>) -> Result<()> {
        self.stage_with(epoch, output, || Ok(())).await
    }

    /// [`SinkLayout::stage`], calling `between` after the data file is
    /// written and before the manifest is (the crash tests stop there: a
    /// staged file without a manifest must be harmless).
    pub async fn stage_with<E>(
        &self,
        epoch: u64,
        output: Option<(PutPayload, u64)>,
        between: impl FnOnce() -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E>
    where
        E: From<Error>,
    {
        let Some((bytes, rows)) = output else {
            between()?;
            // A previous attempt of this epoch cannot have had output (epochs
            // are deterministic), but make sure no stale manifest says so.
            return Ok(self.loc.delete(&self.manifest_name(epoch)).await?);
        };
        let manifest = Manifest {
            version: FORMAT_VERSION,
            epoch,
            files: vec![ManifestFile {
                name: self.final_name(epoch),
                rows,
                bytes: bytes.content_length() as u64,
                staged: None,
            }],
        };
        self.loc.put(&self.pending_name(epoch), bytes).await?;
        between()?;
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Corrupt {
            url: self.loc.url_of(&self.manifest_name(epoch)),
            epoch: Some(epoch),
            reason: e.to_string(),
        })?;
        Ok(self
            .loc
            .put(&self.manifest_name(epoch), Bytes::from(json))
            .await?)
    }

    /// Reads the manifest of an epoch, if it had output.
    pub async fn manifest(&self, epoch: u64) -> Result<Option<Manifest>> {
        let name = self.manifest_name(epoch);
        let Some(bytes) = self.loc.get(&name).await? else {
            return Ok(None);
        };
        let corrupt = |reason: String| Error::Corrupt {
            url: self.loc.url_of(&name),
            epoch: Some(epoch),
            reason,
        };
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if m.version > PARTS_VERSION {
            return Err(Error::FutureVersion {
                url: self.loc.url_of(&name),
                epoch: Some(epoch),
                found: m.version,
                supported: PARTS_VERSION,
            });
        }
        if m.epoch != epoch {
            return Err(corrupt(format!("the manifest says epoch {}", m.epoch)));
        }
        Ok(Some(m))
    }

    /// Every epoch with a manifest, ascending.
    pub async fn manifest_epochs(&self) -> Result<Vec<u64>> {
        let dir = format!("_weir/manifests/{}", self.writer);
        let mut epochs: Vec<u64> = self
            .loc
            .list(&dir)
            .await?
            .iter()
            .filter_map(|m| {
                let name = self.loc.relative(&m.location);
                name.rsplit('/').next()?.strip_suffix(".json")?.parse().ok()
            })
            .collect();
        epochs.sort_unstable();
        Ok(epochs)
    }

    /// Deletes the manifests of epochs before `epoch` (retention). The
    /// output files they list stay: they are the sink's contents. Staged
    /// files of those epochs still there are ones no commit named (an
    /// attempt the driver did not choose, a run rolled back and replayed
    /// elsewhere, a stale executor's late write): they go too.
    pub async fn prune_manifests(&self, epoch: u64) -> Result<()> {
        for e in self.manifest_epochs().await?.into_iter().filter(|&e| e < epoch) {
            self.loc.delete(&self.manifest_name(e)).await?;
        }
        let pending_dir = format!("_weir/pending/{}/", self.writer);
        for meta in self.loc.list(&pending_dir).await? {
            let name = self.loc.relative(&meta.location);
            let stale = name
                .strip_prefix(&pending_dir)
                .and_then(|n| self.epoch_of_file(n))
                .is_some_and(|e| e < epoch);
            if stale {
                self.loc.delete(&name).await?;
            }
        }
        Ok(())
    }

    /// Deletes everything this writer wrote for epochs after `epoch`:
    /// published files, staged files and manifests (a rollback to `epoch`;
    /// the epochs run again then write the same names, so the sink's later
    /// output is replaced, not duplicated). Returns the names deleted.
    pub async fn remove_after(&self, epoch: u64) -> Result<Vec<String>> {
        let pending_dir = format!("_weir/pending/{}/", self.writer);
        let manifest_dir = format!("_weir/manifests/{}/", self.writer);
        let mut removed = Vec::new();
        for meta in self.loc.list("").await? {
            let name = self.loc.relative(&meta.location);
            let e = if let Some(p) = name.strip_prefix(&pending_dir) {
                self.epoch_of_file(p).filter(|_| p.ends_with(".pending"))
            } else if let Some(m) = name.strip_prefix(&manifest_dir) {
                m.strip_suffix(".json").and_then(|d| d.parse().ok())
            } else if !name.contains('/') {
                self.epoch_of_file(&name).filter(|_| !name.ends_with(".pending"))
            } else {
                None
            };
            if e.is_some_and(|e| e > epoch) {
                self.loc.delete(&name).await?;
                removed.push(name);
            }
        }
        removed.sort();
        Ok(removed)
    }

    /// Publishes a committed epoch's staged files. Idempotent: files already
    /// published are left alone; a file neither staged nor published means
    /// committed output was lost, which is reported.
    pub async fn publish(&self, epoch: u64) -> Result<u64> {
        use futures::{StreamExt, TryStreamExt};
        let Some(manifest) = self.manifest(epoch).await? else {
            return Ok(0);
        };
        // An epoch written on a cluster has a file per part: renamed
        // PUBLISH_IN_FLIGHT at a time (on S3 a rename is a copy and a
        // delete, ~30 ms each; one after another, 400 files took 36 s in
        // `docs/scale.md`'s estimate).
        let publishes: Vec<_> = manifest
            .files
            .into_iter()
            .map(|file| self.publish_file(epoch, file))
            .collect();
        let rows: Vec<u64> = futures::stream::iter(publishes)
            .buffer_unordered(PUBLISH_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(rows.iter().sum())
    }

    /// The files of a committed epoch that are neither staged nor
    /// published (committed output lost), without moving any: what
    /// [`SinkLayout::publish`] would stop at, for `weir checkpoint inspect`.
    pub async fn lost_files(&self, epoch: u64) -> Result<Vec<String>> {
        let Some(manifest) = self.manifest(epoch).await? else {
            return Ok(Vec::new());
        };
        let mut lost = Vec::new();
        for file in manifest.files {
            let pending = match &file.staged {
                Some(staged) => staged.clone(),
                None => format!("_weir/pending/{}/{}.pending", self.writer, file.name),
            };
            if self.loc.size(&pending).await?.is_none() && self.loc.size(&file.name).await?.is_none() {
                lost.push(self.loc.url_of(&file.name));
            }
        }
        Ok(lost)
    }

    /// Publishes one file of a committed epoch; returns its rows.
    async fn publish_file(&self, epoch: u64, file: ManifestFile) -> Result<u64> {
        let pending = match &file.staged {
            Some(staged) => staged.clone(),
            None => format!("_weir/pending/{}/{}.pending", self.writer, file.name),
        };
        match self.loc.rename(&pending, &file.name).await {
            Ok(()) => {}
            Err(Error::Store {
                error: object_store::Error::NotFound { .. },
                ..
            }) => {
                if self.loc.get(&file.name).await?.is_none() {
                    return Err(Error::Corrupt {
                        url: self.loc.url_of(&file.name),
                        epoch: Some(epoch),
                        reason: "a committed output file is neither staged nor published".into(),
                    });
                }
            }
            Err(e) => return Err(e),
        }
        Ok(file.rows)
    }
}

/// Files of one epoch published at once.
const PUBLISH_IN_FLIGHT: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;
    use crate::location::Create;

    #[tokio::test]
    async fn staged_files_are_invisible_to_a_parquet_glob_until_published() {
        let dir = tempfile::tempdir().unwrap();
        let loc = Location::open(dir.path().to_str().unwrap(), &StoreOptions::default(), Create::No).unwrap();
        let sink = SinkLayout::new(loc.clone(), "q1-0");
        sink.stage(7, Some((Bytes::from_static(b"PAR1").into(), 3)))
            .await
            .unwrap();
        let visible = |loc: Location| async move {
            loc.list("")
                .await
                .unwrap()
                .into_iter()
                .filter(|m| m.location.as_ref().ends_with(".parquet"))
                .count()
        };
        assert_eq!(visible(loc.clone()).await, 0);
        assert_eq!(sink.publish(7).await.unwrap(), 3);
        assert_eq!(visible(loc.clone()).await, 1);
        // Publishing again (a restart after the commit) changes nothing.
        assert_eq!(sink.publish(7).await.unwrap(), 3);
        assert_eq!(visible(loc.clone()).await, 1);
        assert_eq!(sink.publish(8).await.unwrap(), 0);
    }

    /// A damaged `owner.json` is named as the sink folder's file, not as a
    /// checkpoint's (the user went looking in the checkpoint).
    #[tokio::test]
    async fn a_damaged_owner_record_is_called_a_sink_file() {
        let loc = Location::open(
            "memory://sink-owner-garbage",
            &StoreOptions::default(),
            Create::Yes,
        )
        .unwrap();
        loc.put(SinkOwner::NAME, Bytes::from_static(b"{not json"))
            .await
            .unwrap();
        let e = SinkOwner::read(&loc).await.unwrap_err().to_string();
        assert!(
            e.starts_with("corrupt sink file memory://sink-owner-garbage/_weir/owner.json"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn lost_committed_output_is_reported() {
        let loc = Location::open("memory://sink-lost", &StoreOptions::default(), Create::Yes).unwrap();
        let sink = SinkLayout::new(loc.clone(), "q-0");
        sink.stage(1, Some((Bytes::from_static(b"x").into(), 1)))
            .await
            .unwrap();
        loc.delete("_weir/pending/q-0/part-0000000001-q-0.parquet.pending")
            .await
            .unwrap();
        let err = sink.publish(1).await.unwrap_err().to_string();
        assert!(
            err.contains("part-0000000001-q-0.parquet") && err.contains("epoch 1"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn removing_later_epochs_leaves_other_writers_and_earlier_epochs() {
        let loc = Location::open("memory://sink-rollback", &StoreOptions::default(), Create::Yes).unwrap();
        let sink = SinkLayout::new(loc.clone(), "q-p0");
        let late = SinkLayout::new(loc.clone(), "q-p0-late");
        for e in 1..=4 {
            sink.stage(e, Some((Bytes::from_static(b"x").into(), 1)))
                .await
                .unwrap();
            late.stage(e, Some((Bytes::from_static(b"y").into(), 1)))
                .await
                .unwrap();
            if e < 4 {
                sink.publish(e).await.unwrap();
                late.publish(e).await.unwrap();
            }
        }
        let removed = sink.remove_after(2).await.unwrap();
        assert_eq!(
            removed,
            vec![
                "_weir/manifests/q-p0/00000000000000000003.json",
                "_weir/manifests/q-p0/00000000000000000004.json",
                "_weir/pending/q-p0/part-0000000004-q-p0.parquet.pending",
                "part-0000000003-q-p0.parquet",
            ]
        );
        assert_eq!(sink.manifest_epochs().await.unwrap(), vec![1, 2]);
        assert_eq!(late.manifest_epochs().await.unwrap(), vec![1, 2, 3, 4]);
        assert!(loc.get("part-0000000002-q-p0.parquet").await.unwrap().is_some());
        assert!(
            loc.get("part-0000000003-q-p0-late.parquet")
                .await
                .unwrap()
                .is_some()
        );
        assert!(sink.remove_after(2).await.unwrap().is_empty(), "idempotent");
    }

    #[tokio::test]
    async fn an_epoch_in_parts_publishes_the_attempts_its_manifest_chose() {
        let loc = Location::open("memory://sink-parts", &StoreOptions::default(), Create::Yes).unwrap();
        let sink = SinkLayout::new(loc.clone(), "q-p0");
        let put = |name: String, body: &'static str| {
            let loc = loc.clone();
            async move { loc.put(&name, Bytes::from_static(body.as_bytes())).await.unwrap() }
        };
        // Part 0 ran twice (attempts a1 and b2), part 1 once; the driver
        // chose b2 for part 0.
        put(sink.staged_part_name(3, 0, "a1"), "first").await;
        put(sink.staged_part_name(3, 0, "b2"), "second").await;
        put(sink.staged_part_name(3, 1, "c3"), "other").await;
        let file = |part: usize, attempt: &str| ManifestFile {
            name: sink.final_part_name(3, part),
            rows: 1,
            bytes: 5,
            staged: Some(sink.staged_part_name(3, part, attempt)),
        };
        sink.stage_files(3, vec![file(0, "b2"), file(1, "c3")])
            .await
            .unwrap();
        assert_eq!(sink.publish(3).await.unwrap(), 2);
        assert_eq!(sink.publish(3).await.unwrap(), 2, "idempotent");
        let got = loc
            .get("part-0000000003-q-p0-00000.parquet")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got[..], b"second");
        assert!(
            loc.get("part-0000000003-q-p0-00001.parquet")
                .await
                .unwrap()
                .is_some()
        );
        // The attempt not chosen is still staged, unseen by a glob; a late
        // write of it (a stale executor) changes nothing published.
        put(sink.staged_part_name(3, 0, "a1"), "late").await;
        let got = loc
            .get("part-0000000003-q-p0-00000.parquet")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got[..], b"second");
        // Retention past epoch 3 deletes what was staged and never chosen.
        put(sink.staged_part_name(4, 0, "d4"), "next").await;
        sink.prune_manifests(4).await.unwrap();
        assert!(
            loc.get(&sink.staged_part_name(3, 0, "a1"))
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            loc.get(&sink.staged_part_name(4, 0, "d4"))
                .await
                .unwrap()
                .is_some()
        );
        // A rollback to epoch 2 removes the parts, published and staged.
        let removed = sink.remove_after(2).await.unwrap();
        assert_eq!(
            removed,
            vec![
                "_weir/pending/q-p0/part-0000000004-q-p0-00000.parquet.d4.pending",
                "part-0000000003-q-p0-00000.parquet",
                "part-0000000003-q-p0-00001.parquet",
            ]
        );
        // An epoch with no rows in any part names no file.
        sink.stage_files(5, vec![]).await.unwrap();
        assert_eq!(sink.publish(5).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_file_written_elsewhere_is_checked_before_a_manifest_names_it() {
        let loc = Location::open("memory://sink-check", &StoreOptions::default(), Create::Yes).unwrap();
        let sink = SinkLayout::new(loc.clone(), "q-p0");
        let staged = sink.staged_part_name(7, 2, "ab12");
        loc.put(&staged, Bytes::from_static(b"12345")).await.unwrap();
        let file = ManifestFile {
            name: sink.final_part_name(7, 2),
            rows: 3,
            bytes: 5,
            staged: Some(staged.clone()),
        };
        sink.check_staged(7, 2, &file).await.unwrap();
        let refused = |f: ManifestFile, part: usize, why: &'static str| {
            let sink = sink.clone();
            async move {
                let e = sink.check_staged(7, part, &f).await.unwrap_err().to_string();
                assert!(e.contains(why), "{e}");
            }
        };
        // Another part's name, another writer's, no attempt, a short file,
        // a file that is not there.
        refused(file.clone(), 3, "not as this sink's part").await;
        let other = SinkLayout::new(loc.clone(), "q-p1").staged_part_name(7, 2, "ab12");
        refused(
            ManifestFile {
                staged: Some(other),
                ..file.clone()
            },
            2,
            "not as this sink's part",
        )
        .await;
        let bare = format!("_weir/pending/q-p0/{}..pending", file.name);
        refused(
            ManifestFile {
                staged: Some(bare),
                ..file.clone()
            },
            2,
            "not as this sink's part",
        )
        .await;
        refused(
            ManifestFile {
                bytes: 9,
                ..file.clone()
            },
            2,
            "has 5 bytes where its writer reported 9",
        )
        .await;
        let missing = sink.staged_part_name(7, 2, "cd34");
        refused(
            ManifestFile {
                staged: Some(missing),
                ..file.clone()
            },
            2,
            "is not in this sink folder",
        )
        .await;
        refused(
            ManifestFile {
                staged: None,
                ..file.clone()
            },
            2,
            "has no staged name",
        )
        .await;

        // A manifest naming staged files is written at PARTS_VERSION, which
        // this Weir reads and a later version's is refused.
        sink.stage_files(7, vec![file.clone()]).await.unwrap();
        let m = sink.manifest(7).await.unwrap().unwrap();
        assert_eq!(m.version, PARTS_VERSION);
        let mut later = m.clone();
        later.version = PARTS_VERSION + 1;
        let name = "_weir/manifests/q-p0/00000000000000000007.json";
        loc.put(name, Bytes::from(serde_json::to_vec(&later).unwrap()))
            .await
            .unwrap();
        assert!(matches!(sink.manifest(7).await, Err(Error::FutureVersion { .. })));
        // The owner record is marked once, and keeps its owner.
        let owner = SinkOwner {
            version: FORMAT_VERSION,
            checkpoint: "file:///ck".into(),
            query_id: "q".into(),
            table: "t".into(),
        };
        assert_eq!(owner.claim(&loc).await.unwrap(), owner);
        owner.mark_parts(&loc).await.unwrap();
        let marked = SinkOwner::read(&loc).await.unwrap().unwrap();
        assert_eq!(marked.version, PARTS_VERSION);
        assert!(marked.same_as(&owner));
        owner.mark_parts(&loc).await.unwrap();
    }
}
