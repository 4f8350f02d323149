//! Running a changed query on an existing checkpoint.
//!
//! A checkpoint's `metadata.json` records what its state means: every
//! stateful operator (id, kind and a signature of what it computes), every
//! source (what its progress refers to) and every sink (where its output and
//! manifests are). When a job is started on a checkpoint made by a different
//! query text, the two sets of records are compared:
//!
//! * **No difference** (only stateless parts changed: filters, projections,
//!   scalar functions, rate limits, watermark delay, TTL): the job continues
//!   from the last commit with its state, and the metadata is updated to the
//!   new query.
//! * **Any difference** (a stateful operator added, removed or computing
//!   something else, e.g. another GROUP BY key, aggregate, window or HAVING; a
//!   source added, removed or pointed elsewhere; a sink pointed elsewhere or
//!   statements reordered; not a dead-letter table added, which has no
//!   earlier output to miss): the job is refused with the list of differences.
//!   With `fresh_state` it starts instead with empty operator state; sources
//!   that did not change keep their progress (so input already processed is
//!   not read again), the others start from the beginning.
//!
//! The same rules, for users, are in the README ("Changing a query").

pub(crate) mod claim;
pub mod signature;

use weir_storage::{Metadata, OperatorRecord, SinkRecord, SourceRecord};

/// What a job's checkpoint records about it.
#[derive(Clone, Debug, Default)]
pub struct Records {
    /// Every stateful operator: id, kind, signature, state keys.
    pub operators: Vec<OperatorRecord>,
    /// Every source: name and what its progress refers to.
    pub sources: Vec<SourceRecord>,
    /// Every sink: where its output and manifests are.
    pub sinks: Vec<SinkRecord>,
}

impl Records {
    /// Whether a checkpoint records nothing (made before Weir kept records).
    pub fn of_metadata(m: &Metadata) -> Option<Records> {
        if m.operators.is_empty() && m.sources.is_empty() && m.sinks.is_empty() {
            return None;
        }
        Some(Records {
            operators: m.operators.clone(),
            sources: m.sources.clone(),
            sinks: m.sinks.clone(),
        })
    }
}

/// The differences that stop `new` from using the state of `old`; empty when
/// the change is compatible.
pub fn incompatibilities(old: &Records, new: &Records) -> Vec<String> {
    let mut out = Vec::new();
    for o in &old.operators {
        match new.operators.iter().find(|n| n.id == o.id) {
            None => out.push(format!(
                "the {} {} (state keyed by {}) is gone from the query",
                o.kind,
                o.id,
                o.keys.join(", ")
            )),
            Some(n) if n.kind != o.kind => {
                out.push(format!("{} was a {} and is now a {}", o.id, o.kind, n.kind))
            }
            Some(n) if !same_operator(&o.signature, &n.signature) => {
                let detail = if n.keys != o.keys {
                    format!(
                        "its state key was ({}), now ({})",
                        o.keys.join(", "),
                        n.keys.join(", ")
                    )
                } else if n.values != o.values {
                    format!(
                        "its aggregates were ({}), now ({})",
                        o.values.join(", "),
                        n.values.join(", ")
                    )
                } else {
                    let (was, now) = changed_part(&o.signature, &n.signature);
                    format!("`{was}` is now `{now}`")
                };
                out.push(format!(
                    "the {} {} computes something else: {detail}",
                    o.kind, o.id
                ));
            }
            Some(_) => {}
        }
    }
    for n in &new.operators {
        if !old.operators.iter().any(|o| o.id == n.id) {
            out.push(format!(
                "the {} {} (state keyed by {}) is new and has no state in the checkpoint",
                n.kind,
                n.id,
                n.keys.join(", ")
            ));
        }
    }
    for o in &old.sources {
        match new.sources.iter().find(|n| n.name == o.name) {
            None => out.push(format!("source '{}' is no longer read", o.name)),
            Some(n) if !same_source(&n.signature, &o.signature) => out.push(format!(
                "source '{}' now reads `{}`; its progress is for `{}`",
                o.name,
                weir_sql::secrets::mask_url_credentials(&n.signature, false),
                weir_sql::secrets::mask_url_credentials(&o.signature, false)
            )),
            Some(_) => {}
        }
    }
    for n in &new.sources {
        if !old.sources.iter().any(|o| o.name == n.name) {
            out.push(format!("source '{}' is new", n.name));
        }
    }
    // A table several queries write (a late-row or dead-letter table
    // several send rows to, or one that several INSERTs write) has a
    // record per query, in the queries' order: the k-th record of a table
    // is compared with the k-th of the new query's, side tables and main
    // ones apart (comparing each with the first, every change to such a
    // job was refused as if an INSERT had moved).
    let side =
        |r: &SinkRecord| r.writer.ends_with("-late") || crate::dead_letter::is_dead_letter_writer(&r.writer);
    for (i, o) in old.sinks.iter().enumerate() {
        let k = old.sinks[..i]
            .iter()
            .filter(|p| p.table == o.table && side(p) == side(o))
            .count();
        let found = new
            .sinks
            .iter()
            .filter(|n| n.table == o.table && side(n) == side(o))
            .nth(k);
        let others = new.sinks.iter().any(|n| n.table == o.table && side(n) == side(o));
        match found {
            None if others && !side(o) => out.push(format!("an INSERT INTO {} was removed", o.table)),
            None => out.push(format!("sink '{}' is no longer written", o.table)),
            Some(n) if read_anew(o, n) => out.push(format!(
                "sink '{}' ('{}') now writes to {}, and its committed output is in {} (a Weir before December \
                 2026 read that path as a relative folder)",
                o.table, o.path, n.url, o.url
            )),
            Some(n) if normal_path(&n.path) != normal_path(&o.path) => out.push(format!(
                "sink '{}' now writes to '{}', and its committed output is in '{}'",
                o.table, n.path, o.path
            )),
            Some(n) if n.writer != o.writer => out.push(format!(
                "the INSERT INTO {} moved (statements were added, removed or reordered)",
                o.table
            )),
            Some(_) => {}
        }
    }
    // Writers name positions, not statements: two INSERTs into one table
    // that swapped places match record by record, and each would take up
    // the other's operator state (with the same aggregates, nothing else
    // tells). The hash of each statement's text does: an INSERT found at
    // another INSERT's place is a swap. (An INSERT edited as well as moved
    // is an edit, as a changed filter of one INSERT is.) Records of an
    // earlier Weir have no hash: such a table's INSERTs cannot be told
    // apart, and any change is refused, as that Weir did (`claim` fills
    // the hashes in when the text is unchanged).
    let mut tables: Vec<&str> = old
        .sinks
        .iter()
        .filter(|o| !side(o))
        .map(|o| o.table.as_str())
        .collect();
    tables.sort_unstable();
    tables.dedup();
    for table in tables {
        let statements = |r: &Records| -> Vec<String> {
            r.sinks
                .iter()
                .filter(|x| x.table == table && !side(x))
                .map(|x| x.statement.clone())
                .collect()
        };
        let (was, now) = (statements(old), statements(new));
        if was.len() < 2 || was == now {
            continue;
        }
        if was.iter().any(String::is_empty) {
            out.push(format!(
                "the checkpoint was made by an earlier Weir, which did not record which of the INSERTs into {table} \
                 is which: run the query it was made by once with this Weir, then change it"
            ));
        } else if now.iter().enumerate().any(|(k, h)| {
            was.iter()
                .enumerate()
                .any(|(j, w)| j != k && w == h && was.get(k) != Some(h))
        }) {
            out.push(format!(
                "the INSERTs into {table} are in another order (one now reads as another did at another place): \
                 each would take up the state of the one whose place it took; if you edited one to read as \
                 another, start the job with --fresh-state or its own --checkpoint"
            ));
        }
    }
    for (i, n) in new.sinks.iter().enumerate() {
        // A new dead-letter or late-row table misses nothing: under the
        // old query bad records stopped the job or were skipped, and late
        // rows were dropped. (One that goes away is a difference, as any
        // sink: its last epoch may still be staged.) A new INSERT into a
        // table another INSERT writes is new too: it would read only the
        // input after the change, as a new table's would.
        if side(n) {
            continue;
        }
        let k = new.sinks[..i]
            .iter()
            .filter(|p| p.table == n.table && !side(p))
            .count();
        let before = old
            .sinks
            .iter()
            .filter(|o| o.table == n.table && !side(o))
            .count();
        if before == 0 && k == 0 {
            out.push(format!("sink '{}' is new", n.table));
        } else if k >= before && before > 0 {
            out.push(format!(
                "an INSERT INTO {} was added: its query has no state or progress in the checkpoint, and would \
                 read only input that comes after the change",
                n.table
            ));
        }
    }
    out
}

/// A sink column's type as a kind that Parquet files of one folder must
/// agree on: all text types count as one, as do all binary types (Parquet
/// stores each kind alike).
pub fn column_kind(t: &str) -> String {
    match t {
        "Utf8" | "LargeUtf8" | "Utf8View" => "text".to_string(),
        "Binary" | "LargeBinary" | "BinaryView" => "binary".to_string(),
        other => other.to_string(),
    }
}

/// The sink columns whose type a changed query changes (`a sink's
/// columns, name type`: see `SinkRecord::columns`). Not a difference that
/// `--fresh-state` may override: the folder would hold files of both types,
/// which no reader reads as one table. All text types count as one type,
/// as do all binary types (Parquet stores each kind alike).
pub fn sink_type_changes(old: &Records, new: &Records) -> Vec<String> {
    let kind = column_kind;
    let split = |c: &String| c.split_once(' ').map(|(n, t)| (n.to_string(), t.to_string()));
    let mut out = Vec::new();
    let main = |r: &SinkRecord| {
        !r.writer.ends_with("-late") && !crate::dead_letter::is_dead_letter_writer(&r.writer)
    };
    for (i, o) in old.sinks.iter().enumerate() {
        // The k-th INSERT into a table with the new k-th, as above.
        let k = old.sinks[..i]
            .iter()
            .filter(|p| p.table == o.table && main(p) == main(o))
            .count();
        let Some(n) = new
            .sinks
            .iter()
            .filter(|n| n.table == o.table && main(n) == main(o))
            .nth(k)
        else {
            continue;
        };
        for (name, was) in o.columns.iter().filter_map(split) {
            if let Some((_, now)) = n.columns.iter().filter_map(split).find(|(m, _)| *m == name)
                && kind(&now) != kind(&was)
            {
                out.push(format!(
                    "sink '{}': column '{name}' would now be {now}, but the output committed in its folder has it \
                     as {was}",
                    o.table
                ));
            }
        }
    }
    out
}

/// What follows an operator's own signature in its record: what its input
/// columns are computed from (`driver::open::operator_inputs`).
pub(crate) const INPUTS_MARK: &str = " inputs:";

/// What follows the input columns' part: what that part did not follow (a
/// window's time column, so that moving a window to another column is a
/// change; the inputs of a UNION or a lookup join below the operator, so
/// that a view changed in one branch is one).
pub(crate) const MORE_MARK: &str = " more:";

/// Whether the operator recorded as `old` is the one now recorded as
/// `new`. A record written before records held the input columns'
/// computations (an older Weir) is compared without them, and one written
/// before they held [`MORE_MARK`]'s part without that part: the change from
/// that Weir to this one is not a change of the query.
fn same_operator(old: &str, new: &str) -> bool {
    if !old.contains(INPUTS_MARK) {
        new.split_once(INPUTS_MARK).map_or(new, |(own, _)| own) == old
    } else if !old.contains(MORE_MARK) {
        new.split_once(MORE_MARK).map_or(new, |(known, _)| known) == old
    } else {
        old == new
    }
}

/// Where two operator signatures differ, with the words around it: the
/// whole signatures are long internal strings (a window's every setting,
/// each column's type), in which a change is hard to find.
fn changed_part(a: &str, b: &str) -> (String, String) {
    let (ac, bc): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut start = ac.iter().zip(&bc).take_while(|(x, y)| x == y).count();
    let max_end = ac.len().min(bc.len()) - start;
    let mut end = ac
        .iter()
        .rev()
        .zip(bc.iter().rev())
        .take(max_end)
        .take_while(|(x, y)| x == y)
        .count();
    // Widen to whole words: back to the last separator before, on to the
    // next one after. (Not parentheses: `limit=Some(2)` is one word, where
    // the change alone, `2`, said nothing.)
    let separator = |c: &char| matches!(c, ' ' | ',' | '{' | '}' | '[' | ']');
    while start > 0 && !separator(&ac[start - 1]) {
        start -= 1;
    }
    // And the word before, which names a setting (`size_ms: 10000`).
    if start > 0 && ac[start - 1] == ' ' {
        start -= 1;
        while start > 0 && !separator(&ac[start - 1]) {
            start -= 1;
        }
    }
    while end > 0 && !separator(&ac[ac.len() - end]) {
        end -= 1;
    }
    let part = |cs: &[char]| {
        let mid: String = cs[start..cs.len() - end].iter().collect();
        format!(
            "{}{}{}",
            if start > 0 { "..." } else { "" },
            mid.trim(),
            if end > 0 { "..." } else { "" }
        )
    };
    (part(&ac), part(&bc))
}

/// Whether two source signatures (`claim::source_signature`) read the
/// same input: equal once the path is written one way (`in`, `in/`,
/// `./in//` and `file://` before an absolute path are one folder), so
/// that rewriting a path is not taken for a new source, whose progress
/// would start over.
pub fn same_source(a: &str, b: &str) -> bool {
    a == b || normal_signature(a) == normal_signature(b)
}

fn normal_signature(sig: &str) -> String {
    let Some(at) = sig.find("path=") else {
        return sig.to_string();
    };
    let (head, rest) = sig.split_at(at + "path=".len());
    // The path runs to the next key (the keys' order is fixed).
    let end = [" topic=", " format=", " seed="]
        .iter()
        .filter_map(|k| rest.find(k))
        .min()
        .unwrap_or(rest.len());
    let (path, tail) = rest.split_at(end);
    let p = normal_path(path);
    format!("{head}{p}{tail}")
}

/// Whether a sink path this Weir reads otherwise than the Weir before
/// did: `file:/abs` and `file://localhost/abs` were relative folders
/// (`./file:/abs`, `./localhost/abs`), and are `/abs` now. The same text
/// then names another folder than the one its committed output is in.
fn read_anew(old: &SinkRecord, new: &SinkRecord) -> bool {
    let p = old.path.to_ascii_lowercase();
    let reread = (p.starts_with("file:/") && !p.starts_with("file://")) || p.starts_with("file://localhost/");
    reread && !old.url.is_empty() && old.url != new.url
}

/// A path as written in two ways that name one folder compares equal:
/// `file://` (or `file://localhost`, `file:`) before an absolute path,
/// doubled slashes, leading `./`, a trailing slash.
fn normal_path(path: &str) -> String {
    let mut p = weir_storage::location::local_path(path)
        .unwrap_or(path)
        .to_string();
    while p.contains("//") && !p.contains("://") {
        p = p.replace("//", "/");
    }
    while let Some(r) = p.strip_prefix("./") {
        p = r.to_string();
    }
    p.trim_end_matches('/').to_string()
}

/// The sources whose progress a fresh start keeps: same name, same
/// signature. (With no old records, every source of the same name.)
pub fn kept_sources(old: Option<&Records>, new: &Records) -> Vec<String> {
    new.sources
        .iter()
        .filter(|n| match old {
            Some(old) => old
                .sources
                .iter()
                .any(|o| o.name == n.name && same_source(&o.signature, &n.signature)),
            None => true,
        })
        .map(|n| n.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    /// A record of an older Weir (no input part) matches the same
    /// operator now recorded with one; records that both have the part
    /// must agree on it.
    #[test]
    fn input_columns_are_compared_when_both_records_have_them() {
        let now = format!("keys[k=k;]{INPUTS_MARK} in0[k=k % 5]");
        assert!(same_operator("keys[k=k;]", &now));
        assert!(!same_operator("keys[k=k;]", "keys[j=j;] inputs:"));
        assert!(same_operator(&now, &now));
        assert!(!same_operator(&format!("keys[k=k;]{INPUTS_MARK}"), &now));
        // The part after MORE_MARK likewise, once both records have it.
        let more = format!("{now}{MORE_MARK} in0[window time=ts]");
        assert!(same_operator(&now, &more));
        assert!(same_operator(&more, &more));
        assert!(!same_operator(
            &more,
            &format!("{now}{MORE_MARK} in0[window time=ts2]")
        ));
        assert!(!same_operator(&format!("keys[k=k;]{INPUTS_MARK}"), &more));
    }

    #[test]
    fn a_changed_signature_shows_only_what_changed() {
        let (was, now) = super::changed_part(
            "window-aggregate Tumble { size_ms: 10000, offset_ms: 0 } keys [k:Int64]",
            "window-aggregate Tumble { size_ms: 20000, offset_ms: 0 } keys [k:Int64]",
        );
        assert_eq!(
            (was.as_str(), now.as_str()),
            ("...size_ms: 10000...", "...size_ms: 20000...")
        );
        let (was, now) = super::changed_part("keys [k:Int64, v:Utf8]", "keys [k:Int32, v:Utf8]");
        assert_eq!((was.as_str(), now.as_str()), ("...k:Int64...", "...k:Int32..."));
        let (was, now) = super::changed_part(
            "window-top-n RowNumber limit=Some(2) partition [k]",
            "window-top-n RowNumber limit=Some(3) partition [k]",
        );
        assert_eq!(
            (was.as_str(), now.as_str()),
            ("...RowNumber limit=Some(2)...", "...RowNumber limit=Some(3)...")
        );
        let (was, now) = super::changed_part("a", "ab");
        assert_eq!((was.as_str(), now.as_str()), ("a", "ab"));
    }

    #[test]
    fn a_path_written_another_way_is_the_same_source() {
        use super::same_source;
        let sig = |p: &str| format!("connector=files path={p} format=json");
        assert!(same_source(&sig("in/"), &sig("in")));
        assert!(same_source(&sig("./in//"), &sig("in/")));
        assert!(same_source(&sig("file:///data/in/"), &sig("/data/in")));
        assert!(same_source(&sig("my in/"), &sig("my in")));
        assert!(!same_source(&sig("in/"), &sig("in2/")));
        assert!(!same_source(&sig("in/"), &sig("in/sub/")));
        assert!(!same_source(
            "connector=files path=in/ format=json",
            "connector=files path=in/ format=csv"
        ));
    }
    use super::*;

    fn op(id: &str, keys: &[&str], sig: &str) -> OperatorRecord {
        OperatorRecord {
            id: id.into(),
            kind: "window-aggregate".into(),
            signature: sig.into(),
            keys: keys.iter().map(|s| s.to_string()).collect(),
            values: vec!["a0.count[count]".into()],
            evicted_by: String::new(),
        }
    }

    fn records(ops: Vec<OperatorRecord>, source_sig: &str, sink_url: &str) -> Records {
        Records {
            operators: ops,
            sources: vec![SourceRecord {
                name: "bids".into(),
                signature: source_sig.into(),
            }],
            sinks: vec![SinkRecord {
                table: "out".into(),
                path: sink_url.into(),
                url: format!("file://{sink_url}"),
                writer: "abc-p0".into(),
                columns: vec![],
                statement: String::new(),
            }],
        }
    }

    #[test]
    fn unchanged_records_are_compatible() {
        let a = records(
            vec![op("p0-agg0", &["window_start", "auction"], "s1")],
            "files|in|parquet",
            "file:///o/",
        );
        assert!(incompatibilities(&a, &a.clone()).is_empty());
    }

    #[test]
    fn a_changed_key_is_named() {
        let a = records(
            vec![op("p0-agg0", &["window_start", "auction"], "s1")],
            "files|in|parquet",
            "file:///o/",
        );
        let b = records(
            vec![op("p0-agg0", &["window_start", "bidder"], "s2")],
            "files|in|parquet",
            "file:///o/",
        );
        let d = incompatibilities(&a, &b);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            d[0].contains("(window_start, auction), now (window_start, bidder)"),
            "{d:?}"
        );
    }

    #[test]
    fn sources_and_sinks_that_move_are_named() {
        let a = records(vec![], "files|in|parquet", "o/");
        let b = records(vec![op("p0-agg0", &["k"], "s")], "files|other|parquet", "p/");
        let d = incompatibilities(&a, &b);
        assert!(d.iter().any(|m| m.contains("is new and has no state")), "{d:?}");
        assert!(
            d.iter()
                .any(|m| m.contains("source 'bids' now reads `files|other|parquet`")),
            "{d:?}"
        );
        assert!(
            d.iter().any(|m| m.contains("sink 'out' now writes to 'p/'")),
            "{d:?}"
        );
        assert!(kept_sources(Some(&a), &b).is_empty());
        assert_eq!(kept_sources(Some(&a), &a), vec!["bids".to_string()]);
    }

    #[test]
    fn a_new_dead_letter_table_is_compatible_and_a_dropped_one_is_not() {
        let a = records(vec![], "files|in|parquet", "o/");
        let mut b = a.clone();
        let bad = |table: &str, writer: String| SinkRecord {
            table: table.into(),
            path: format!("{table}/"),
            url: format!("file:///{table}/"),
            writer,
            columns: vec![],
            statement: String::new(),
        };
        b.sinks
            .push(bad("bad_bids", crate::dead_letter::writer("abcdef0123")));
        assert!(incompatibilities(&a, &b).is_empty());
        let d = incompatibilities(&b, &a);
        assert!(
            d.iter()
                .any(|m| m.contains("sink 'bad_bids' is no longer written")),
            "{d:?}"
        );
        // Any other new sink is a difference.
        b.sinks[1].writer = "abcdef01-p1".into();
        let d = incompatibilities(&a, &b);
        assert!(d.iter().any(|m| m.contains("sink 'bad_bids' is new")), "{d:?}");
    }

    /// A late table two queries send rows to has a record per query: each
    /// matches its own (a moved job was refused as "moved"). So do two
    /// INSERTs into one table (any change to such a job was refused); the
    /// same two in the other order are a swap, refused.
    #[test]
    fn shared_tables_match_record_by_record_and_swapped_inserts_are_refused() {
        let rec = |table: &str, writer: &str| SinkRecord {
            table: table.into(),
            path: format!("{table}/"),
            url: format!("file:///{table}/"),
            writer: writer.into(),
            columns: vec![],
            statement: String::new(),
        };
        let mut a = records(vec![], "files|in|parquet", "o/");
        a.sinks = vec![
            rec("w1", "q-p0"),
            rec("late_t", "q-p0-late"),
            rec("w2", "q-p1"),
            rec("late_t", "q-p1-late"),
        ];
        assert!(incompatibilities(&a, &a.clone()).is_empty());
        let mut two = a.clone();
        let insert = |writer: &str, statement: &str| SinkRecord {
            statement: statement.into(),
            ..rec("o", writer)
        };
        two.sinks = vec![insert("q-p0", "h1"), insert("q-p1", "h2")];
        assert!(incompatibilities(&two, &two.clone()).is_empty());
        // One edited: an edit, as of a single INSERT.
        let mut edited = two.clone();
        edited.sinks[1].statement = "h3".into();
        assert!(incompatibilities(&two, &edited).is_empty());
        // Swapped.
        let mut swapped = two.clone();
        swapped.sinks = vec![insert("q-p0", "h2"), insert("q-p1", "h1")];
        let d = incompatibilities(&two, &swapped);
        assert!(
            d.iter()
                .any(|m| m.contains("the INSERTs into o are in another order")),
            "{d:?}"
        );
        // A statement added before them moves their writers.
        let mut moved = two.clone();
        moved.sinks = vec![insert("q-p1", "h1"), insert("q-p2", "h2")];
        let d = incompatibilities(&two, &moved);
        assert!(d.iter().any(|m| m.contains("the INSERT INTO o moved")), "{d:?}");
        // An edit and a swap: the edited one is at the other's place.
        let mut both = two.clone();
        both.sinks = vec![insert("q-p0", "h2"), insert("q-p1", "h3")];
        let d = incompatibilities(&two, &both);
        assert!(
            d.iter()
                .any(|m| m.contains("the INSERTs into o are in another order")),
            "{d:?}"
        );
        // An INSERT added to a table another writes is new; one removed
        // is gone. A late-row table added misses nothing.
        let mut added = two.clone();
        added.sinks.push(insert("q-p2", "h4"));
        let d = incompatibilities(&two, &added);
        assert!(
            d.iter().any(|m| m.contains("an INSERT INTO o was added")),
            "{d:?}"
        );
        let d = incompatibilities(&added, &two);
        assert!(
            d.iter().any(|m| m.contains("an INSERT INTO o was removed")),
            "{d:?}"
        );
        let mut late = two.clone();
        late.sinks.push(rec("late_t", "q-p0-late"));
        assert!(incompatibilities(&two, &late).is_empty());
        // An earlier Weir's records, without hashes: any change is refused,
        // saying how to go on.
        let old_two = Records {
            sinks: vec![rec("o", "q-p0"), rec("o", "q-p1")],
            ..two.clone()
        };
        // A sink path the Weir before read as a relative folder.
        let mut was = records(vec![], "files|in|parquet", "file:/abs/o/");
        was.sinks[0].url = "file:///home/u/file:/abs/o".into();
        let mut now = was.clone();
        now.sinks[0].url = "file:///abs/o".into();
        let d = incompatibilities(&was, &now);
        assert!(
            d.iter()
                .any(|m| m.contains("read that path as a relative folder")),
            "{d:?}"
        );
        assert!(incompatibilities(&now, &now.clone()).is_empty());
        let d = incompatibilities(&old_two, &edited);
        assert!(
            d.iter()
                .any(|m| m.contains("did not record which of the INSERTs into o")),
            "{d:?}"
        );
    }
}
