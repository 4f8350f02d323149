//! The folders a job writes, checked before it writes anything.
//!
//! Exactly-once output rests on each sink folder having one writer, and on
//! no folder feeding itself:
//!
//! ```text
//!  sink folder  ── one owner ──▶ the checkpoint (URL + query id) in _weir/owner.json
//!  sink folder  ✗ at or inside a source folder of the job   (it would read its own output)
//!  sink folder  ✗ at or inside any checkpoint               (retention and rollback own it)
//!  checkpoint   ✗ at or inside a sink folder                (its state files would be output)
//!  checkpoint   ✗ at or inside a source folder of the job   (its own files would be read as input)
//!  two sinks    ✗ sharing a folder                          (their rows would mix)
//! ```
//!
//! The owner is checked when a job opens and recorded when the sink first
//! stages output ([`crate::sink::FileSink`]), so that a plan that is only
//! explained never claims a folder.

use weir_storage::location::Create;
use weir_storage::{Checkpoint, Location, SinkOwner, StoreOptions};

use crate::{Error, Result};

/// Whether `inner` is `outer` or inside it.
fn within(inner: &Location, outer: &Location) -> bool {
    // Without their trailing '/', so that a store's root (`file:///`,
    // `s3://bucket/`) holds everything in it.
    let (i, o) = (
        inner.url().trim_end_matches('/'),
        outer.url().trim_end_matches('/'),
    );
    i == o || i.strip_prefix(o).is_some_and(|rest| rest.starts_with('/'))
}

/// The folder a URL is in, if it has one within its store's root.
fn parent_url(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let rest = rest.trim_end_matches('/');
    let cut = rest.rfind('/')?;
    let parent = &rest[..cut];
    // file:///a -> file:// + "" is the root: keep "/".
    let parent = if scheme == "file" && parent.is_empty() {
        "/"
    } else {
        parent
    };
    if parent.is_empty() {
        return None;
    }
    Some(format!("{scheme}://{parent}"))
}

/// The checkpoint at or above `loc` (a folder with a Weir checkpoint's
/// `metadata.json`), if any.
async fn enclosing_checkpoint(loc: &Location, options: &StoreOptions) -> Option<String> {
    let mut url = Some(loc.url().to_string());
    while let Some(u) = url {
        if let Ok(l) = Location::open(&u, options, Create::No)
            && let Ok(Some(_)) = Checkpoint::new(l).read_metadata().await
        {
            return Some(u);
        }
        url = parent_url(&u);
    }
    None
}

/// The URL a location will have once opened, without creating it: a local
/// path made absolute through its deepest existing ancestor (as opening it
/// would, symbolic links resolved), `s3://` as written. `None` when it
/// cannot tell.
fn planned_url(location: &str) -> Option<String> {
    let local = match location.split_once("://") {
        Some(("s3" | "s3a", rest)) => return Some(format!("s3://{}", rest.trim_end_matches('/'))),
        _ => weir_storage::location::local_path(location)?,
    };
    let path = std::path::Path::new(local);
    let mut existing = path;
    let mut rest = Vec::new();
    while !existing.exists() {
        rest.push(existing.file_name()?);
        existing = existing
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
    }
    let mut abs = std::fs::canonicalize(existing).ok()?;
    for part in rest.iter().rev() {
        abs.push(part);
    }
    Some(format!("file://{}", abs.display()))
}

/// Refuses a checkpoint at or inside a source folder (`(table, path)`)
/// before the checkpoint is created: created first, its folder and lease
/// would be left in the source, read as input by the next run.
pub fn refuse_checkpoint_in_sources(checkpoint: &str, sources: &[(&str, &str)]) -> Result<()> {
    let Some(ck) = planned_url(checkpoint) else {
        return Ok(());
    };
    for (source, path) in sources {
        let Some(folder) = planned_url(path) else {
            continue;
        };
        let (i, o) = (ck.trim_end_matches('/'), folder.trim_end_matches('/'));
        if i == o || i.strip_prefix(o).is_some_and(|rest| rest.starts_with('/')) {
            return Err(checkpoint_in_source(&ck, source, &folder));
        }
    }
    Ok(())
}

fn checkpoint_in_source(
    checkpoint: &dyn std::fmt::Display,
    source: &str,
    folder: &dyn std::fmt::Display,
) -> Error {
    Error::Config(format!(
        "the checkpoint {checkpoint} is inside the folder of source '{source}' ({folder}): the job would read \
         its own checkpoint files as input. Put the checkpoint elsewhere (--checkpoint; by default it is the \
         job file's name with .checkpoint, beside the job file, so keep the job file out of its data folder, \
         which it would be read from too)"
    ))
}

/// A sink folder of the job.
pub struct SinkFolder<'a> {
    /// The sink table.
    pub table: &'a str,
    /// Its folder.
    pub loc: &'a Location,
    /// The store settings it was opened with.
    pub options: StoreOptions,
}

/// Checks the rules above between the job's checkpoint, its sinks and its
/// source folders (`(table, folder)`).
pub async fn check(
    checkpoint: &Location,
    sinks: &[SinkFolder<'_>],
    sources: &[(&str, &Location)],
) -> Result<()> {
    for (source, folder) in sources {
        if within(checkpoint, folder) {
            return Err(checkpoint_in_source(checkpoint, source, folder));
        }
    }
    for (i, s) in sinks.iter().enumerate() {
        for other in &sinks[i + 1..] {
            if other.table != s.table && (within(s.loc, other.loc) || within(other.loc, s.loc)) {
                return Err(Error::Config(format!(
                    "sink tables '{}' ({}) and '{}' ({}) share a folder, so their rows would mix; \
                     give each sink a folder of its own",
                    s.table, s.loc, other.table, other.loc
                )));
            }
        }
        for (source, folder) in sources {
            if within(s.loc, folder) {
                return Err(Error::Config(format!(
                    "sink table '{}' writes to {}, which is {} the folder of source '{source}' ({folder}): \
                     the job would read its own output, again and again. Give the sink a 'path' \
                     outside its sources' folders",
                    s.table,
                    s.loc,
                    if s.loc.url() == folder.url() {
                        "also"
                    } else {
                        "inside"
                    },
                )));
            }
        }
        if within(checkpoint, s.loc) {
            return Err(Error::Config(format!(
                "the checkpoint {checkpoint} is inside the folder of sink table '{}' ({}): its state \
                 files would be read as output. Put the checkpoint elsewhere (--checkpoint)",
                s.table, s.loc
            )));
        }
        let inside = if within(s.loc, checkpoint) {
            Some(checkpoint.url().to_string())
        } else {
            enclosing_checkpoint(s.loc, &s.options).await
        };
        if let Some(ck) = inside {
            return Err(Error::Config(format!(
                "sink table '{}' writes to {}, which is inside the checkpoint {ck}: a checkpoint's \
                 folder belongs to its job (retention and rollback delete files in it). Give the \
                 sink a 'path' outside every checkpoint",
                s.table, s.loc
            )));
        }
    }
    Ok(())
}

/// The refusal of a sink folder that `found` owns, for `me`.
pub fn owner_conflict(loc: &Location, me: &SinkOwner, found: &SinkOwner) -> Error {
    let whose = if found.checkpoint.trim_end_matches('/') == me.checkpoint.trim_end_matches('/') {
        format!(
            "an earlier query whose checkpoint was at the same place ({}) but was made anew since \
             (query id {} then, {} now), so the folder holds output this run would write a second time",
            found.checkpoint, found.query_id, me.query_id
        )
    } else {
        format!(
            "the query with the checkpoint {} (its table '{}'), while this query's checkpoint is {}; \
             two queries writing one folder would mix their rows and repeat them",
            found.checkpoint, found.table, me.checkpoint
        )
    };
    Error::Config(format!(
        "sink table '{}' writes to {loc}, which belongs to {whose} (see {loc}/_weir/owner.json). \
         Give the sink a 'path' of its own, or, if that folder's output is no longer wanted, delete \
         the folder and run again",
        me.table
    ))
}

/// Refuses a sink folder that another checkpoint's query owns, or that a
/// copy of this checkpoint owns (see [`copy_conflict`]). `lease` is the
/// id of the lease this process holds on `me.checkpoint`.
pub async fn check_owner(loc: &Location, me: &SinkOwner, lease: &str, options: &StoreOptions) -> Result<()> {
    match SinkOwner::read(loc).await? {
        Some(found) if !found.same_as(me) => Err(owner_conflict(loc, me, &found)),
        Some(found) => match copy_conflict(loc, me, &found, lease, options).await {
            Some(e) => Err(e),
            None => Ok(()),
        },
        None => Ok(()),
    }
}

/// Whether the checkpoint recorded as a sink folder's owner (`found`, the
/// same query as `me`'s) is another copy of it, still in place, rather
/// than `me` itself moved there.
///
/// A checkpoint may move (its folder renamed, copied to S3 and the old one
/// deleted): the query id stays, so the folder stays its own. A copy left
/// beside the original has the same query id too, but two checkpoints
/// writing one folder undo each other: a rollback of one deletes output
/// that the other has committed, and both publish the same epochs. So the
/// owner's recorded place is looked at: if a checkpoint of the same query
/// is still there, writing to this folder (a whole project copied with its
/// sink folders writes to its own), and its lease is not the one this
/// process holds (`me` under another spelling of its URL), `me` is a copy.
/// A place that cannot be opened or read counts as moved, as before this
/// check.
pub async fn copy_conflict(
    loc: &Location,
    me: &SinkOwner,
    found: &SinkOwner,
    lease: &str,
    options: &StoreOptions,
) -> Option<Error> {
    if found.checkpoint.trim_end_matches('/') == me.checkpoint.trim_end_matches('/') {
        return None;
    }
    let there = Checkpoint::new(Location::open(&found.checkpoint, options, Create::No).ok()?);
    let meta = there.read_metadata().await.ok()??;
    if meta.query_id != found.query_id {
        return None;
    }
    // A whole project copied (its sink folders with it): the checkpoint
    // there writes to its own folders, not this one.
    if !meta
        .sinks
        .iter()
        .any(|s| s.url.trim_end_matches('/') == loc.url().trim_end_matches('/'))
    {
        return None;
    }
    if there
        .current_lease()
        .await
        .ok()
        .flatten()
        .is_some_and(|l| l.owner == lease)
    {
        return None;
    }
    Some(Error::Config(format!(
        "sink table '{}' writes to {loc}, which belongs to the checkpoint {} (see \
         {loc}/_weir/owner.json), and that checkpoint is still there: {} is a copy of it (the same \
         query). Two copies of one checkpoint writing one folder would publish its epochs twice, and \
         rolling one back would delete output the other has committed. Use {} (or, if this copy is \
         to take over, delete that one first)",
        me.table, found.checkpoint, me.checkpoint, found.checkpoint
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_stop_at_the_store_root() {
        assert_eq!(parent_url("file:///a/b").as_deref(), Some("file:///a"));
        assert_eq!(parent_url("file:///a").as_deref(), Some("file:///"));
        assert_eq!(parent_url("file:///"), None);
        assert_eq!(parent_url("s3://bucket/a/b").as_deref(), Some("s3://bucket/a"));
        assert_eq!(parent_url("s3://bucket/a").as_deref(), Some("s3://bucket"));
        assert_eq!(parent_url("s3://bucket"), None);
    }

    #[test]
    fn within_is_by_whole_path_parts() {
        let o = StoreOptions::default();
        let a = Location::open("memory://w/a", &o, Create::Yes).unwrap();
        let ab = Location::open("memory://w/a/b", &o, Create::Yes).unwrap();
        let abc = Location::open("memory://w/abc", &o, Create::Yes).unwrap();
        assert!(within(&ab, &a) && within(&a, &a));
        assert!(!within(&a, &ab) && !within(&abc, &a));
        // A store's root holds everything in it (a sink at `'path' = '/'`).
        let root = Location::open("file:///", &o, Create::No).unwrap();
        let ck = Location::open(
            &format!("file://{}", std::env::temp_dir().display()),
            &o,
            Create::No,
        )
        .unwrap();
        assert!(within(&ck, &root) && !within(&root, &ck));
    }
}
