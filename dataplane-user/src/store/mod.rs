//! Where the control plane keeps its truth.
//!
//! A [`Store`] is a transactional key-value space with string keys
//! (`networks/<id>`, `endpoints/<id>`, `containers/<id>`) and JSON values. The
//! embedded implementation is [`RedbStore`]; the multi-host work adds an etcd
//! implementation of the same trait (its transactions map onto etcd `Txn`).

mod redb_store;

use anyhow::Result;
pub use redb_store::RedbStore;

/// One atomic change: every put and delete lands, or none does.
#[derive(Debug, Default)]
pub struct Txn {
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
}

pub trait Store: Send + Sync {
    /// Every `(key, value)` whose key starts with `prefix`, in key order.
    fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>>;
    /// Applies `txn` atomically.
    fn commit(&self, txn: Txn) -> Result<()>;
}
