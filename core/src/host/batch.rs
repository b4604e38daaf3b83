//! Set-based reads for a batch of keys. A run's guests ask the same queries for every key (the
//! key's own upstream row, say); once a query has been seen, the host reads its rows for the
//! next batch of keys in one statement ([`Session::prefetch`], a LATERAL subquery per key) and
//! answers each key's call from them ([`Prefetched`]), instead of one statement per key. What a
//! guest is given is the same either way: the same statement per key, in the same snapshot.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::make::{Field, Row, Value};

use super::statements::Statement;
use super::{lock, Backend, Fetch, Session};

/// Bytes of rows the batched reads of one batch may take together (at most the make's memory
/// limit); a read that needs more is left to the keys.
pub const PREFETCH_BUDGET: usize = 64 << 20;

/// Queries read for a batch at most (the ones most keys asked).
pub const MAX_BATCHED: usize = 8;

/// A query of the run that can be read for a batch of keys.
pub struct Batchable {
    fetch: Arc<Fetch>,
}

impl Batchable {
    pub fn statement(&self) -> &Statement {
        self.fetch.batched.as_ref().expect("only batched fetches are batchable")
    }
}

/// Rows read ahead for the keys of a batch, by query, in the batch's key order; each key's rows
/// are handed out once.
#[derive(Default)]
pub struct Prefetched {
    rows: HashMap<usize, Vec<Option<Vec<Row>>>>,
    position: Option<usize>,
}

impl Prefetched {
    /// Rows read ahead for `fetch` (rows of `keys` keys, each led by its key's ordinal).
    pub fn insert(&mut self, query: &Batchable, keys: usize, rows: Vec<Row>) {
        let mut per_key: Vec<Option<Vec<Row>>> = vec![Some(Vec::new()); keys];
        for mut row in rows {
            let ordinal = match row.first().map(|f| &f.value) {
                Some(Value::Int(i)) if (1..=keys as i64).contains(i) => *i as usize,
                // Not a row of this batch: the keys read their own.
                _ => return,
            };
            row.remove(0);
            if let Some(Some(rows)) = per_key.get_mut(ordinal - 1) {
                rows.push(row);
            }
        }
        self.rows.insert(query.fetch.id, per_key);
    }

    /// The next make call is for the key at `position` of the batch (`None`: a key not in it).
    pub fn at(&mut self, position: Option<usize>) {
        self.position = position;
    }

    /// The current key's rows of `fetch`, if read ahead and not handed out yet.
    pub(super) fn take(&mut self, fetch: &Fetch) -> Option<Vec<Row>> {
        self.rows.get_mut(&fetch.id)?.get_mut(self.position?)?.take()
    }
}

/// Host memory rows take, as the backends charge a guest's budget (roughly).
pub fn rows_bytes(rows: &[Row]) -> usize {
    let value = |v: &Value| match v {
        Value::Text(s) | Value::Json(s) | Value::Decimal(s) => s.len(),
        Value::Bytes(b) => b.len(),
        _ => 0,
    };
    rows.iter()
        .flatten()
        .map(|Field { name, value: v }| std::mem::size_of::<Field>() + name.len() + value(v))
        .sum()
}

impl Session {
    /// The queries worth reading for the next batch: those asked at least `min_uses` times since
    /// the last call (by most keys of the last batch, say), that can be read for many keys at
    /// once, at most [`MAX_BATCHED`] of them, the most asked first. Counting starts again.
    pub fn batchable(&self, min_uses: usize) -> Vec<Batchable> {
        let unbatchable = lock(&self.unbatchable);
        let mut fetches: Vec<(usize, Arc<Fetch>)> = lock(&self.fetches)
            .values()
            .map(|f| (f.uses.swap(0, Ordering::Relaxed), f.clone()))
            .filter(|(uses, f)| {
                *uses >= min_uses.max(1) && f.batched.is_some() && !unbatchable.contains(&f.id)
            })
            .collect();
        fetches.sort_by_key(|(uses, f)| (std::cmp::Reverse(*uses), f.id));
        fetches.into_iter().take(MAX_BATCHED).map(|(_, fetch)| Batchable { fetch }).collect()
    }

    /// The rows of `query` for every key of `keys`, each led by its key's ordinal (1-based), at
    /// most `budget` bytes of them.
    pub fn prefetch<B: Backend>(
        &self,
        backend: &mut B,
        query: &Batchable,
        keys: &[Row],
        budget: usize,
    ) -> Result<Vec<Row>, B::Error> {
        const NULL: &Value = &Value::Null;
        let statement = query.statement();
        let args: Vec<Vec<&Value>> = statement
            .params
            .iter()
            .map(|c| {
                keys.iter().map(|k| k.iter().find(|f| f.name == c.name).map_or(NULL, |f| &f.value)).collect()
            })
            .collect();
        backend.query_keys(statement, &args, budget)
    }

    /// `query` failed to read for a batch: the keys of this run read it themselves from now on.
    pub fn not_batchable(&self, query: &Batchable) {
        lock(&self.unbatchable).insert(query.fetch.id);
    }
}
