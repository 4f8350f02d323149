//! The distinct values of each group, kept as keyed state (Flink's way of
//! running `COUNT(DISTINCT x)` without a window): see `update_agg`'s module
//! comment for how the aggregate uses them and how they are checkpointed.
//!
//! Groups and values are both in Arrow's row format (bytes that compare
//! equal exactly when the values do). Each group has a *slot*, found once
//! per group and input batch, so the per-row work is one lookup of the
//! value in its group's set. A value's flags have one bit per aggregate over
//! its argument (bit `b`: a row with this value passed aggregate `b`'s
//! filter), and [`DIRTY`] while it is listed as changed since the last
//! checkpoint, so a delta holds each changed value once, with its flags of
//! the moment.

use datafusion::common::HashMap;
use datafusion::common::hash_map::{Entry, EntryRef};

/// Flag bit of a value listed as changed since the last checkpoint; the
/// other 63 bits are aggregates'.
pub const DIRTY: u64 = 1 << 63;

/// At most this many aggregates share one argument's values.
pub const MAX_MEMBERS: usize = 63;

/// A value of at most 15 bytes (every fixed-width type's row format: 9
/// bytes for a BIGINT) packed into an integer with its length, so that it
/// is hashed and compared as one number and stored without an allocation.
/// (Two `u64`s rather than a `u128`: 8-byte alignment keeps a table's
/// entries at 24 bytes, not 32.)
type Packed = [u64; 2];

fn pack(v: &[u8]) -> Option<Packed> {
    if v.len() > 15 {
        return None;
    }
    let mut b = [0u8; 16];
    b[..v.len()].copy_from_slice(v);
    b[15] = v.len() as u8;
    let (lo, hi) = b.split_at(8);
    Some([
        u64::from_le_bytes(lo.try_into().unwrap_or_default()),
        u64::from_le_bytes(hi.try_into().unwrap_or_default()),
    ])
}

fn unpack(p: Packed, out: &mut Vec<u8>) {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&p[0].to_le_bytes());
    b[8..].copy_from_slice(&p[1].to_le_bytes());
    out.extend_from_slice(&b[..b[15] as usize]);
}

/// One group's values, per argument.
struct GroupSeen {
    key: Vec<u8>,
    /// Values of at most 15 bytes, packed -> flags.
    small: Vec<HashMap<Packed, u64>>,
    /// Longer values -> flags.
    large: Vec<HashMap<Vec<u8>, u64>>,
    /// Values whose flags changed since the last checkpoint.
    changed_small: Vec<Vec<Packed>>,
    changed_large: Vec<Vec<Vec<u8>>>,
    /// Whether the slot is in [`SeenValues::dirty`].
    listed: bool,
}

impl GroupSeen {
    fn len(&self) -> usize {
        self.small.iter().map(HashMap::len).sum::<usize>()
            + self.large.iter().map(HashMap::len).sum::<usize>()
    }
}

/// Values to write (or delete): group keys, and per value (argument, index
/// into `keys`, flags, its bytes in `bytes`).
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// Group keys (row format).
    pub keys: Vec<Vec<u8>>,
    /// (argument, group key index, flags, value's range in `bytes`).
    pub items: Vec<(usize, u32, u64, std::ops::Range<usize>)>,
    /// The values' bytes (row format), one after another.
    pub bytes: Vec<u8>,
}

impl Changes {
    fn start_group(&mut self, key: &[u8]) -> u32 {
        self.keys.push(key.to_vec());
        (self.keys.len() - 1) as u32
    }

    fn push_packed(&mut self, arg: usize, group: u32, flags: u64, value: Packed) {
        let at = self.bytes.len();
        unpack(value, &mut self.bytes);
        self.items.push((arg, group, flags, at..self.bytes.len()));
    }

    fn push(&mut self, arg: usize, group: u32, flags: u64, value: &[u8]) {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(value);
        self.items.push((arg, group, flags, at..self.bytes.len()));
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// The distinct values of every group of one shard.
#[derive(Default)]
pub struct SeenValues {
    args: usize,
    index: HashMap<Vec<u8>, usize>,
    slots: Vec<Option<GroupSeen>>,
    free: Vec<usize>,
    /// Slots with changed values since the last checkpoint.
    dirty: Vec<usize>,
    /// Values deleted with their group since the last checkpoint.
    deleted: Changes,
    /// Values held.
    len: usize,
}

impl SeenValues {
    /// No values, for `args` distinct arguments.
    pub fn new(args: usize) -> Self {
        Self {
            args,
            ..Default::default()
        }
    }

    /// The slot of a group, made if the group has none.
    pub fn slot(&mut self, key: &[u8]) -> usize {
        if let Some(&s) = self.index.get(key) {
            return s;
        }
        let g = GroupSeen {
            key: key.to_vec(),
            small: vec![HashMap::default(); self.args],
            large: vec![HashMap::default(); self.args],
            changed_small: vec![Vec::new(); self.args],
            changed_large: vec![Vec::new(); self.args],
            listed: false,
        };
        let s = match self.free.pop() {
            Some(s) => {
                self.slots[s] = Some(g);
                s
            }
            None => {
                self.slots.push(Some(g));
                self.slots.len() - 1
            }
        };
        self.index.insert(key.to_vec(), s);
        s
    }

    /// Records that rows with `value` passed the filters of the aggregates
    /// in `bits`, in the group of `slot`; returns the bits that are new
    /// (the aggregates that had not seen the value).
    pub fn see(&mut self, slot: usize, arg: usize, value: &[u8], bits: u64) -> u64 {
        let Some(g) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return 0;
        };
        let packed = pack(value);
        let (flags, fresh) = match packed {
            Some(p) => match g.small[arg].entry(p) {
                Entry::Occupied(o) => (o.into_mut(), false),
                Entry::Vacant(v) => (v.insert(0), true),
            },
            None => match g.large[arg].entry_ref(value) {
                EntryRef::Occupied(o) => (o.into_mut(), false),
                EntryRef::Vacant(v) => (v.insert(0), true),
            },
        };
        let new = bits & !*flags;
        if new == 0 {
            return 0;
        }
        if fresh {
            self.len += 1;
        }
        if *flags & DIRTY == 0 {
            match packed {
                Some(p) => g.changed_small[arg].push(p),
                None => g.changed_large[arg].push(value.to_vec()),
            }
        }
        *flags |= new | DIRTY;
        if !g.listed {
            g.listed = true;
            self.dirty.push(slot);
        }
        new
    }

    /// Puts back a value read from a checkpoint (not a change to write).
    pub fn restore(&mut self, key: &[u8], arg: usize, value: &[u8], flags: u64) {
        let s = self.slot(key);
        let Some(g) = self.slots[s].as_mut() else { return };
        let before = match pack(value) {
            Some(p) => g.small[arg].insert(p, flags & !DIRTY),
            None => g.large[arg].insert(value.to_vec(), flags & !DIRTY),
        };
        if before.is_none() {
            self.len += 1;
        }
    }

    /// Drops a group's values (its group was deleted); they are written as
    /// deleted at the next checkpoint.
    pub fn remove(&mut self, key: &[u8]) {
        let Some(s) = self.index.remove(key) else { return };
        let Some(g) = self.slots[s].take() else { return };
        self.free.push(s);
        self.len -= g.len();
        let at = self.deleted.start_group(&g.key);
        for (arg, values) in g.small.into_iter().enumerate() {
            for p in values.into_keys() {
                self.deleted.push_packed(arg, at, 0, p);
            }
        }
        for (arg, values) in g.large.into_iter().enumerate() {
            for v in values.into_keys() {
                self.deleted.push(arg, at, 0, &v);
            }
        }
    }

    /// Values held, over all groups and arguments.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no value is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The values changed since the last call (or every value, if `all`),
    /// and the values deleted since; the next call starts afresh.
    pub fn take_changes(&mut self, all: bool) -> (Changes, Changes) {
        let mut out = Changes::default();
        if all {
            for g in self.slots.iter_mut().flatten() {
                let at = out.start_group(&g.key);
                for (arg, set) in g.small.iter_mut().enumerate() {
                    for (p, f) in set.iter_mut() {
                        *f &= !DIRTY;
                        out.push_packed(arg, at, *f, *p);
                    }
                }
                for (arg, set) in g.large.iter_mut().enumerate() {
                    for (v, f) in set.iter_mut() {
                        *f &= !DIRTY;
                        out.push(arg, at, *f, v);
                    }
                }
                g.changed_small.iter_mut().for_each(Vec::clear);
                g.changed_large.iter_mut().for_each(Vec::clear);
                g.listed = false;
            }
            self.dirty.clear();
            self.deleted = Changes::default();
            return (out, Changes::default());
        }
        for s in std::mem::take(&mut self.dirty) {
            // A slot listed, then freed (and perhaps reused): `listed` says
            // whether its present group has changes.
            let Some(g) = self.slots[s].as_mut().filter(|g| g.listed) else {
                continue;
            };
            g.listed = false;
            let at = out.start_group(&g.key);
            for arg in 0..self.args {
                for p in std::mem::take(&mut g.changed_small[arg]) {
                    if let Some(f) = g.small[arg].get_mut(&p) {
                        *f &= !DIRTY;
                        out.push_packed(arg, at, *f, p);
                    }
                }
                for v in std::mem::take(&mut g.changed_large[arg]) {
                    if let Some(f) = g.large[arg].get_mut(&v) {
                        *f &= !DIRTY;
                        out.push(arg, at, *f, &v);
                    }
                }
            }
        }
        (out, std::mem::take(&mut self.deleted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (argument, group key, value, flags), sorted.
    fn rows(c: &Changes) -> Vec<(usize, Vec<u8>, Vec<u8>, u64)> {
        let mut out: Vec<_> = c
            .items
            .iter()
            .map(|(a, k, f, r)| (*a, c.keys[*k as usize].clone(), c.bytes[r.clone()].to_vec(), *f))
            .collect();
        out.sort();
        out
    }

    fn long() -> Vec<u8> {
        (0..40).collect()
    }

    #[test]
    fn a_value_is_new_once_per_aggregate_and_written_once_per_checkpoint() {
        let mut s = SeenValues::new(2);
        let g = s.slot(b"g");
        for v in [b"x".to_vec(), long()] {
            assert_eq!(s.see(g, 0, &v, 0b01), 0b01);
            assert_eq!(s.see(g, 0, &v, 0b01), 0);
            assert_eq!(s.see(g, 0, &v, 0b11), 0b10);
            assert_eq!(s.see(g, 1, &v, 0b01), 0b01, "arguments have their own values");
        }
        assert_eq!(s.see(g, 0, b"x\0", 0b01), 0b01, "a longer value is another value");
        assert_eq!(s.len(), 5);
        let (changes, deleted) = s.take_changes(false);
        assert!(deleted.is_empty());
        assert_eq!(changes.keys, vec![b"g".to_vec()]);
        let mut want = vec![
            (0, b"g".to_vec(), b"x".to_vec(), 0b11),
            (1, b"g".to_vec(), b"x".to_vec(), 0b01),
            (0, b"g".to_vec(), long(), 0b11),
            (1, b"g".to_vec(), long(), 0b01),
            (0, b"g".to_vec(), b"x\0".to_vec(), 0b01),
        ];
        want.sort();
        assert_eq!(rows(&changes), want);
        // Nothing changed since: nothing to write; a known value stays known.
        assert_eq!(s.see(g, 0, b"x", 0b11), 0);
        assert_eq!(s.see(g, 0, &long(), 0b11), 0);
        assert!(s.take_changes(false).0.is_empty());
        assert_eq!(rows(&s.take_changes(true).0), want);
    }

    #[test]
    fn a_removed_group_deletes_its_values_and_starts_afresh() {
        let mut s = SeenValues::new(1);
        let g = s.slot(b"g");
        s.see(g, 0, b"x", 1);
        s.see(g, 0, &long(), 1);
        s.take_changes(false);
        s.remove(b"g");
        assert_eq!(s.len(), 0);
        // The slot is reused by another group, which changes.
        let h = s.slot(b"h");
        assert_eq!(h, g);
        assert_eq!(s.see(h, 0, b"x", 1), 1);
        let (changes, deleted) = s.take_changes(false);
        assert_eq!(
            rows(&deleted),
            vec![
                (0, b"g".to_vec(), long(), 0),
                (0, b"g".to_vec(), b"x".to_vec(), 0)
            ]
        );
        assert_eq!(rows(&changes), vec![(0, b"h".to_vec(), b"x".to_vec(), 1)]);
        // The old group comes back empty.
        let g = s.slot(b"g");
        assert_eq!(s.see(g, 0, b"x", 1), 1);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn restored_values_are_known_but_not_changes() {
        let mut s = SeenValues::new(1);
        s.restore(b"g", 0, b"x", 0b1 | DIRTY);
        s.restore(b"g", 0, &long(), 0b1);
        let g = s.slot(b"g");
        assert_eq!(s.see(g, 0, b"x", 1), 0);
        assert_eq!(s.see(g, 0, &long(), 1), 0);
        assert!(s.take_changes(false).0.is_empty());
        let (all, _) = s.take_changes(true);
        assert_eq!(
            rows(&all),
            vec![
                (0, b"g".to_vec(), long(), 1),
                (0, b"g".to_vec(), b"x".to_vec(), 1)
            ]
        );
    }
}
