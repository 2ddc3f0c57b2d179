//! One host's view of a cluster store: the keys every host shares
//! (`cluster/...`) as they are, and this host's own keys under
//! `nodes/<name>/`, so that every host keeps its own `bridge` network,
//! container names and host ports in the same etcd without colliding.
//!
//! The engine and the reconciler see logical keys (`networks/<id>`,
//! `cluster/networks/<id>`); other hosts' own keys are invisible to them.
//! A listing or a watch of everything reads the whole cluster prefix and
//! leaves other hosts' own keys out (the cost of that is in the README's
//! sizing: every host receives every host's changes).

use std::{sync::Arc, time::Duration};

use super::{Entry, Event, Lease, Listing, Revision, Store, StoreResult, Txn, Watch};
use crate::model::CLUSTER;

pub struct NodeScoped {
    inner: Arc<dyn Store>,
    /// `nodes/<name>/`.
    own: String,
}

impl NodeScoped {
    pub fn new(inner: Arc<dyn Store>, node: &str) -> Self {
        Self {
            inner,
            own: format!("nodes/{node}/"),
        }
    }

    fn physical(&self, key: &str) -> String {
        if key.starts_with(CLUSTER) {
            key.to_string()
        } else {
            format!("{}{key}", self.own)
        }
    }

    fn logical<'a>(&self, key: &'a str) -> Option<&'a str> {
        if key.starts_with(CLUSTER) {
            Some(key)
        } else {
            key.strip_prefix(self.own.as_str())
        }
    }

    fn entry(&self, e: Entry) -> Option<Entry> {
        let key = self.logical(&e.key)?.to_string();
        Some(Entry { key, ..e })
    }
}

impl Store for NodeScoped {
    fn get(&self, key: &str) -> StoreResult<Option<Entry>> {
        Ok(self
            .inner
            .get(&self.physical(key))?
            .and_then(|e| self.entry(e)))
    }

    fn list(&self, prefix: &str) -> StoreResult<Listing> {
        // A prefix that is neither inside `cluster/` nor clear of it (like
        // "") reads everything, so that both halves are of one revision.
        let whole = !prefix.starts_with(CLUSTER) && CLUSTER.starts_with(prefix);
        let l = if whole {
            self.inner.list("")?
        } else {
            self.inner.list(&self.physical(prefix))?
        };
        Ok(Listing {
            revision: l.revision,
            entries: l
                .entries
                .into_iter()
                .filter_map(|e| self.entry(e))
                .filter(|e| e.key.starts_with(prefix))
                .collect(),
        })
    }

    fn commit(&self, txn: Txn) -> StoreResult<Revision> {
        let t = Txn {
            guards: txn
                .guards
                .into_iter()
                .map(|(k, e)| (self.physical(&k), e))
                .collect(),
            puts: txn
                .puts
                .into_iter()
                .map(|(k, v)| (self.physical(&k), v))
                .collect(),
            deletes: txn.deletes.iter().map(|k| self.physical(k)).collect(),
        };
        match self.inner.commit(t) {
            Err(super::StoreError::Conflict { key }) => Err(super::StoreError::Conflict {
                key: self.logical(&key).unwrap_or(&key).to_string(),
            }),
            r => r,
        }
    }

    fn watch(&self, prefix: &str, after: Revision) -> StoreResult<Box<dyn Watch>> {
        let whole = !prefix.starts_with(CLUSTER) && CLUSTER.starts_with(prefix);
        let inner = if whole {
            self.inner.watch("", after)?
        } else {
            self.inner.watch(&self.physical(prefix), after)?
        };
        Ok(Box::new(ScopedWatch {
            inner,
            own: self.own.clone(),
            prefix: prefix.to_string(),
        }))
    }

    fn keep_alive(&self, key: &str, value: Vec<u8>, ttl: Duration) -> StoreResult<Box<dyn Lease>> {
        self.inner.keep_alive(&self.physical(key), value, ttl)
    }
}

struct ScopedWatch {
    inner: Box<dyn Watch>,
    own: String,
    prefix: String,
}

impl Watch for ScopedWatch {
    fn next(&mut self, timeout: Duration) -> StoreResult<Vec<Event>> {
        let events = self.inner.next(timeout)?;
        Ok(events
            .into_iter()
            .filter_map(|ev| {
                let key = ev.key();
                let logical = if key.starts_with(CLUSTER) {
                    key.to_string()
                } else {
                    key.strip_prefix(self.own.as_str())?.to_string()
                };
                if !logical.starts_with(&self.prefix) {
                    return None;
                }
                Some(match ev {
                    Event::Put {
                        value, revision, ..
                    } => Event::Put {
                        key: logical,
                        value,
                        revision,
                    },
                    Event::Delete { revision, .. } => Event::Delete {
                        key: logical,
                        revision,
                    },
                })
            })
            .collect())
    }

    fn revision(&self) -> Revision {
        self.inner.revision()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RedbStore;

    #[test]
    fn hosts_share_cluster_keys_and_keep_their_own() {
        let dir = std::env::temp_dir().join(format!("dp-scoped-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let shared: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.join("s.redb")).unwrap());
        let a = NodeScoped::new(shared.clone(), "a");
        let b = NodeScoped::new(shared.clone(), "b");
        let mut w = b.watch("", 0).unwrap();
        let mut t = Txn::default();
        t.put("networks/x", b"a-bridge".to_vec())
            .put("cluster/networks/o", b"overlay".to_vec());
        a.commit(t).unwrap();
        let mut t = Txn::default();
        // The same logical key on another host is another key.
        t.absent("networks/x")
            .put("networks/x", b"b-bridge".to_vec());
        b.commit(t).unwrap();
        let keys = |s: &NodeScoped| {
            s.list("")
                .unwrap()
                .entries
                .into_iter()
                .map(|e| (e.key, e.value))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys(&a),
            [
                ("cluster/networks/o".to_string(), b"overlay".to_vec()),
                ("networks/x".to_string(), b"a-bridge".to_vec()),
            ]
        );
        assert_eq!(
            b.get("networks/x").unwrap().unwrap().value,
            b"b-bridge".to_vec()
        );
        assert_eq!(a.list("networks/").unwrap().entries.len(), 1);
        // b's watch sees the shared key and its own, never a's own.
        let mut seen = Vec::new();
        for _ in 0..10 {
            seen.extend(w.next(Duration::from_millis(200)).unwrap());
            if seen.len() >= 2 {
                break;
            }
        }
        let seen: Vec<&str> = seen.iter().map(Event::key).collect();
        assert_eq!(seen, ["cluster/networks/o", "networks/x"]);
        // A guard on a logical key is checked on this host's key.
        let mut t = Txn::default();
        t.absent("networks/x").put("networks/x", b"again".to_vec());
        assert!(matches!(
            a.commit(t),
            Err(crate::store::StoreError::Conflict { key }) if key == "networks/x"
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
