//! Where the control plane keeps its truth.
//!
//! A [`Store`] is a transactional key-value space with string keys
//! (`networks/<id>`, `endpoints/<id>`, `containers/<id>`, and the claim keys
//! that make allocations unique) and JSON values, shaped like etcd's API so
//! that the multi-host work can put etcd behind the same trait:
//!
//! - every commit gets the next **revision** of the whole store, and every key
//!   remembers the revision that last wrote it (`mod_revision`);
//! - a commit may carry **guards** ("this key is absent", "this key is still
//!   at revision R"), checked atomically with the writes as an etcd `Txn`
//!   compares mod revisions: two writers that read the same state and both
//!   try to claim the same address or port cannot both win;
//! - a **watch** of a key prefix from a revision yields every later change in
//!   order, and can be resumed from the last revision seen (after a daemon
//!   restart too: the embedded store keeps a log of recent revisions).
//!
//! The embedded implementation is [`RedbStore`]; the cluster one, shared by
//! the daemons of several hosts, is [`EtcdStore`].

#[cfg(test)]
mod conformance;
mod etcd_store;
mod redb_store;
mod scoped;

use std::time::Duration;

pub use etcd_store::{parse_store_url, EtcdStore};
pub use redb_store::RedbStore;
pub use scoped::NodeScoped;

/// A store revision: 0 before the first commit, then one more per commit.
pub type Revision = u64;

/// A key with its value and the revision that last wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: Revision,
}

/// Every entry under a prefix, as of one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub revision: Revision,
    pub entries: Vec<Entry>,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `key` now holds `value` (created or replaced) as of `revision`.
    Put {
        key: String,
        value: Vec<u8>,
        revision: Revision,
    },
    /// `key` was deleted at `revision`.
    Delete { key: String, revision: Revision },
}

impl Event {
    pub fn key(&self) -> &str {
        match self {
            Event::Put { key, .. } | Event::Delete { key, .. } => key,
        }
    }

    pub fn revision(&self) -> Revision {
        match self {
            Event::Put { revision, .. } | Event::Delete { revision, .. } => *revision,
        }
    }
}

/// What a guard expects of a key at commit time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The key does not exist.
    Absent,
    /// The key exists and was last written at exactly this revision.
    Revision(Revision),
}

/// One atomic change: if every guard holds, every put and delete lands;
/// otherwise nothing does and the commit fails with [`StoreError::Conflict`].
#[derive(Debug, Default)]
pub struct Txn {
    pub guards: Vec<(String, Expect)>,
    pub puts: Vec<(String, Vec<u8>)>,
    pub deletes: Vec<String>,
}

impl Txn {
    pub fn put(&mut self, key: impl Into<String>, value: Vec<u8>) -> &mut Self {
        self.puts.push((key.into(), value));
        self
    }

    pub fn delete(&mut self, key: impl Into<String>) -> &mut Self {
        self.deletes.push(key.into());
        self
    }

    /// Guard: `key` must not exist when this commits.
    pub fn absent(&mut self, key: impl Into<String>) -> &mut Self {
        self.guards.push((key.into(), Expect::Absent));
        self
    }

    /// Guard: `key` must be as it was read (`None`: it did not exist).
    pub fn unchanged(&mut self, key: impl Into<String>, read: Option<Revision>) -> &mut Self {
        let expect = read.map_or(Expect::Absent, Expect::Revision);
        self.guards.push((key.into(), expect));
        self
    }

    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A guard did not hold: someone else changed `key` first.
    #[error("{key} was changed by another writer")]
    Conflict { key: String },
    /// The watch asked for revisions the store no longer keeps: list again
    /// and watch from the listing's revision.
    #[error("revisions up to {compacted} are compacted; relist")]
    Compacted { compacted: Revision },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

pub trait Store: Send + Sync {
    /// The value of `key` and the revision that last wrote it.
    fn get(&self, key: &str) -> StoreResult<Option<Entry>>;
    /// Every entry whose key starts with `prefix`, in key order, and the
    /// revision they are as of.
    fn list(&self, prefix: &str) -> StoreResult<Listing>;
    /// Applies `txn` atomically if its guards hold; returns the new revision
    /// (the current one, unchanged, for an empty transaction).
    fn commit(&self, txn: Txn) -> StoreResult<Revision>;
    /// The changes to keys under `prefix` after revision `after`, in order.
    fn watch(&self, prefix: &str, after: Revision) -> StoreResult<Box<dyn Watch>>;
    /// Puts `key` for as long as this host is alive: on a cluster store the
    /// key is bound to a lease of `ttl` that the returned handle renews, so
    /// that it vanishes when the host stops renewing it.
    fn keep_alive(&self, key: &str, value: Vec<u8>, ttl: Duration) -> StoreResult<Box<dyn Lease>>;
}

/// A key kept alive by [`Store::keep_alive`].
pub trait Lease: Send {
    /// Whether the key is held right now.
    fn alive(&self) -> bool;
    /// Deletes the key at once (dropping the handle only stops renewing).
    fn revoke(self: Box<Self>);
}

/// A stream of [`Event`]s.
pub trait Watch: Send {
    /// The next changes (at least one, all of the same or later revisions,
    /// in order), or an empty list if none came within `timeout`.
    fn next(&mut self, timeout: Duration) -> StoreResult<Vec<Event>>;
    /// The last revision this watch has delivered (or started after).
    fn revision(&self) -> Revision;
}

/// Decodes every entry of a listing as `T`, keyed by what follows `prefix`.
pub fn decode_all<T: serde::de::DeserializeOwned>(
    listing: &Listing,
    prefix: &str,
) -> anyhow::Result<Vec<(String, T)>> {
    use anyhow::Context as _;
    listing
        .entries
        .iter()
        .map(|e| {
            let t =
                serde_json::from_slice(&e.value).with_context(|| format!("decoding {}", e.key))?;
            Ok((e.key[prefix.len()..].to_string(), t))
        })
        .collect()
}
