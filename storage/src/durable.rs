//! Durable writes to a local folder: the files written since the last
//! [`Written::sync`] are flushed to disk, file by file, with their folders.
//!
//! A write to a local folder returns once its bytes are in the page cache;
//! the kernel writes them out within about half a minute. A power cut or a
//! kernel crash before that loses them, even though the file exists: on
//! ext4 a power cut seven seconds after a run reported "committed through
//! epoch 10" left 132 of its 144 files empty (commits, offsets, state and
//! published sink files alike). Weir flushes what an epoch wrote before it
//! commits the epoch, and the commit and the published files after (see
//! `Location::sync`).
//!
//! Only this store's own writes are flushed (`fsync` of each file, then of
//! each folder that gained an entry, up to the store's root). A `syncfs` of
//! the whole file system was tried first: it also waits for every other
//! program's unwritten data on that disk, and a `dd` writing beside a job
//! made its epochs 100 ms slower each.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};

/// What a local store wrote since it was last made durable.
#[derive(Debug)]
pub struct Written {
    fs: Arc<LocalFileSystem>,
    /// The store's root folder: folders are flushed up to it.
    root: PathBuf,
    /// Objects written (created, copied or renamed to) since the last sync.
    paths: Mutex<BTreeSet<Path>>,
    /// Folders flushed before, with their inode: a folder's own entry in
    /// the folder above it is on the disk once it was flushed, so the
    /// folders above need no flush for it again, unless it was removed
    /// and made anew (another inode).
    durable_folders: Mutex<std::collections::HashMap<PathBuf, u64>>,
    /// Paths whose folder gained or lost an entry by a rename or a delete
    /// (a renamed file's data was flushed before: Weir renames only staged
    /// files, flushed before the commit that publishes them).
    renamed: Mutex<BTreeSet<Path>>,
    /// Held for a whole sync, so that a second one waits for the first's
    /// flushes instead of returning before they are done.
    flushing: Mutex<()>,
}

impl Written {
    fn note(&self, path: &Path) {
        if let Ok(mut paths) = self.paths.lock() {
            paths.insert(path.clone());
        }
    }

    /// How many objects wait for the next sync.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.paths.lock().map_or(0, |p| p.len()) + self.renamed.lock().map_or(0, |p| p.len())
    }

    /// Flushes every file written since the last call to disk, and each
    /// folder above one up to the root (a new file's entry, and a new
    /// folder's, live in the folder that holds it). A file gone since
    /// (a temporary renamed, an upload abandoned) is passed over.
    pub(crate) fn sync(&self) -> std::io::Result<()> {
        let _flushing = self.flushing.lock();
        let paths = match self.paths.lock() {
            Ok(mut paths) => std::mem::take(&mut *paths),
            Err(_) => return Ok(()),
        };
        let renamed = match self.renamed.lock() {
            Ok(mut renamed) => std::mem::take(&mut *renamed),
            Err(_) => BTreeSet::new(),
        };
        if paths.is_empty() && renamed.is_empty() {
            return Ok(());
        }
        let known = self.durable_folders.lock().map(|k| k.clone()).unwrap_or_default();
        let mut files = Vec::with_capacity(paths.len());
        // Each written file's folder (it gained an entry), and the folders
        // above it while the one below may be new: a folder flushed in an
        // earlier sync (the same folder, not one made anew since) had its
        // own entry flushed then too, by induction up to the root.
        let mut folders = BTreeSet::new();
        for (path, data) in paths
            .iter()
            .map(|p| (p, true))
            .chain(renamed.iter().map(|p| (p, false)))
        {
            let Ok(file) = self.fs.path_to_filesystem(path) else {
                continue;
            };
            let mut folder = file.parent();
            while let Some(f) = folder {
                if !f.starts_with(&self.root) || !folders.insert(f.to_path_buf()) {
                    break;
                }
                if known.get(f).is_some_and(|&ino| Some(ino) == inode(f)) {
                    break;
                }
                folder = f.parent();
            }
            if data {
                files.push(file);
            }
        }
        // Files first, then the folders naming them. Each flush waits for
        // the disk; several at once share the file system's journal
        // commits.
        let flushed = flush_all(&files).and_then(|()| {
            let folders: Vec<PathBuf> = folders.iter().cloned().collect();
            flush_all(&folders)
        });
        match flushed {
            Ok(()) => {
                if let Ok(mut known) = self.durable_folders.lock() {
                    for f in folders {
                        if let Some(ino) = inode(&f) {
                            known.insert(f, ino);
                        }
                    }
                }
                Ok(())
            }
            Err(e) => {
                // Still to flush, at the next try.
                if let Ok(mut pending) = self.paths.lock() {
                    pending.extend(paths);
                }
                if let Ok(mut pending) = self.renamed.lock() {
                    pending.extend(renamed);
                }
                Err(e)
            }
        }
    }
}

/// A folder's inode (`None` when it is gone, or off Unix, where every
/// flush then flushes the folders up to the root).
fn inode(folder: &std::path::Path) -> Option<u64> {
    #[cfg(unix)]
    {
        std::fs::metadata(folder)
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
    }
    #[cfg(not(unix))]
    {
        let _ = folder;
        None
    }
}

/// `fsync` of each path (file or folder), on up to eight threads; the
/// first error names its path. A path that is gone is passed over.
fn flush_all(paths: &[PathBuf]) -> std::io::Result<()> {
    let flush = |p: &PathBuf| -> std::io::Result<()> {
        match std::fs::File::open(p) {
            Ok(f) => f
                .sync_all()
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(std::io::Error::new(e.kind(), format!("{}: {e}", p.display()))),
        }
    };
    if paths.len() <= 1 {
        return paths.iter().try_for_each(flush);
    }
    let threads = paths.len().min(8);
    let chunk = paths.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = paths
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().try_for_each(flush)))
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(std::io::Error::other("a flush thread panicked")))
        })
    })
}

/// A local folder's store that notes what it writes, for [`Written::sync`].
#[derive(Debug)]
pub struct Tracked {
    inner: Arc<LocalFileSystem>,
    written: Arc<Written>,
}

impl Tracked {
    /// `fs`, rooted at `root`, and what it will have written.
    pub fn new(fs: LocalFileSystem, root: PathBuf) -> (Self, Arc<Written>) {
        let fs = Arc::new(fs);
        let written = Arc::new(Written {
            fs: Arc::clone(&fs),
            root,
            paths: Mutex::new(BTreeSet::new()),
            durable_folders: Mutex::new(std::collections::HashMap::new()),
            renamed: Mutex::new(BTreeSet::new()),
            flushing: Mutex::new(()),
        });
        (
            Tracked {
                inner: fs,
                written: Arc::clone(&written),
            },
            written,
        )
    }
}

impl fmt::Display for Tracked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Tracked {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let put = self.inner.put_opts(location, payload, opts).await?;
        self.written.note(location);
        Ok(put)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        // Noted now; flushed at the next sync if it was completed by then.
        self.written.note(location);
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        // A deleted file's folder lost an entry: flushed at the next sync
        // (a rollback's deletes reach the disk before its record goes).
        let written = Arc::clone(&self.written);
        futures::StreamExt::boxed(futures::TryStreamExt::map_ok(
            self.inner.delete_stream(locations),
            move |path| {
                if let Ok(mut renamed) = written.renamed.lock() {
                    renamed.insert(path.clone());
                }
                path
            },
        ))
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await?;
        self.written.note(to);
        Ok(())
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await?;
        // The file moved: its new folder gained an entry, and its old one
        // lost one; its data is what it was.
        if let Ok(mut renamed) = self.written.renamed.lock() {
            renamed.insert(to.clone());
            renamed.insert(from.clone());
        }
        Ok(())
    }
}
