//! The embedded default store: one redb file under `--state-dir`.
//!
//! Tables: `objects_v2` maps each key to its mod revision (8 bytes, little
//! endian) followed by its value; `meta` holds the store revision and the
//! last compacted one; `log` maps each revision to the changes it made, so
//! that a watch can start from any revision still kept (also after a
//! restart). The log keeps the last [`LOG_KEEP`] revisions. Watches are
//! in-process: a commit wakes every waiting watcher, which reads the log.

use std::{
    path::Path,
    sync::{Arc, Condvar, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{Entry, Event, Expect, Listing, Revision, Store, StoreError, StoreResult, Txn, Watch};

/// One host alone never expires: the key stays until revoked.
struct Forever {
    store: RedbStore,
    key: String,
}

impl super::Lease for Forever {
    fn alive(&self) -> bool {
        true
    }
    fn revoke(self: Box<Self>) {
        let mut t = Txn::default();
        t.delete(self.key.clone());
        if let Err(e) = self.store.commit(t) {
            tracing::warn!("revoking {}: {e:#}", self.key);
        }
    }
}

/// The table of the first layout (values without revisions), migrated once.
const OBJECTS_V1: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects_v2");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");

const REVISION: &str = "revision";
const COMPACTED: &str = "compacted";

/// How many revisions of history watches can resume from (a daemon
/// restarted after more changes than this relists instead).
pub const LOG_KEEP: u64 = 10_000;

/// redb's page cache. Its default (a large share of memory) lets the
/// daemon's RSS grow with the file; the state is small.
const CACHE_BYTES: usize = 16 << 20;

/// One logged change: a put (`value` set) or a delete.
#[derive(Serialize, Deserialize)]
struct Change {
    key: String,
    value: Option<Vec<u8>>,
}

fn encode(rev: Revision, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&rev.to_le_bytes());
    v.extend_from_slice(value);
    v
}

fn decode(key: &str, raw: &[u8]) -> Result<Entry> {
    let (rev, value) = raw
        .split_first_chunk::<8>()
        .with_context(|| format!("stored value of {key} is truncated"))?;
    Ok(Entry {
        key: key.to_string(),
        value: value.to_vec(),
        mod_revision: u64::from_le_bytes(*rev),
    })
}

/// The revision every watcher waits on.
#[derive(Default)]
struct Notify {
    revision: Mutex<Revision>,
    changed: Condvar,
}

pub struct RedbStore {
    db: Arc<Database>,
    notify: Arc<Notify>,
}

fn other(e: impl Into<anyhow::Error>) -> StoreError {
    StoreError::Other(e.into())
}

impl RedbStore {
    pub fn open(path: &Path) -> Result<Self> {
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .with_context(|| format!("opening the state database {}", path.display()))?;
        // Make sure the tables exist so that reads never fail on a fresh
        // file, and carry a first-layout file over (every key at revision 1).
        let w = db.begin_write()?;
        let revision = {
            let mut objects = w.open_table(OBJECTS)?;
            let mut meta = w.open_table(META)?;
            w.open_table(LOG)?;
            let mut rev = meta.get(REVISION)?.map(|g| g.value()).unwrap_or(0);
            let old: Vec<(String, Vec<u8>)> = match w.open_table(OBJECTS_V1) {
                Ok(t) => t
                    .iter()?
                    .map(|i| i.map(|(k, v)| (k.value().to_string(), v.value().to_vec())))
                    .collect::<Result<_, _>>()?,
                Err(_) => Vec::new(),
            };
            if !old.is_empty() {
                rev += 1;
                for (k, v) in &old {
                    objects.insert(k.as_str(), encode(rev, v).as_slice())?;
                }
                meta.insert(REVISION, rev)?;
                // Nothing before this revision can be replayed.
                meta.insert(COMPACTED, rev)?;
            }
            rev
        };
        let _ = w.delete_table(OBJECTS_V1);
        w.commit()?;
        let notify = Arc::new(Notify::default());
        *notify
            .revision
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = revision;
        Ok(Self {
            db: Arc::new(db),
            notify,
        })
    }
}

impl Store for RedbStore {
    fn get(&self, key: &str) -> StoreResult<Option<Entry>> {
        let r = self.db.begin_read().map_err(other)?;
        let t = r.open_table(OBJECTS).map_err(other)?;
        match t.get(key).map_err(other)? {
            Some(v) => Ok(Some(decode(key, v.value())?)),
            None => Ok(None),
        }
    }

    fn list(&self, prefix: &str) -> StoreResult<Listing> {
        let r = self.db.begin_read().map_err(other)?;
        let t = r.open_table(OBJECTS).map_err(other)?;
        let meta = r.open_table(META).map_err(other)?;
        let revision = meta
            .get(REVISION)
            .map_err(other)?
            .map(|g| g.value())
            .unwrap_or(0);
        let mut entries = Vec::new();
        for item in t.range(prefix..).map_err(other)? {
            let (k, v) = item.map_err(other)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            entries.push(decode(k.value(), v.value())?);
        }
        Ok(Listing { revision, entries })
    }

    fn commit(&self, txn: Txn) -> StoreResult<Revision> {
        let w = self.db.begin_write().map_err(other)?;
        let rev = {
            let mut t = w.open_table(OBJECTS).map_err(other)?;
            let mut meta = w.open_table(META).map_err(other)?;
            let current = meta
                .get(REVISION)
                .map_err(other)?
                .map(|g| g.value())
                .unwrap_or(0);
            for (key, expect) in &txn.guards {
                let found = t
                    .get(key.as_str())
                    .map_err(other)?
                    .map(|v| decode(key, v.value()).map(|e| e.mod_revision))
                    .transpose()?;
                let holds = match expect {
                    Expect::Absent => found.is_none(),
                    Expect::Revision(r) => found == Some(*r),
                };
                if !holds {
                    // Dropping `w` aborts the transaction: nothing lands.
                    return Err(StoreError::Conflict { key: key.clone() });
                }
            }
            if txn.is_empty() {
                return Ok(current);
            }
            let rev = current + 1;
            let mut changes = Vec::new();
            for key in &txn.deletes {
                if t.remove(key.as_str()).map_err(other)?.is_some() {
                    changes.push(Change {
                        key: key.clone(),
                        value: None,
                    });
                }
            }
            for (key, value) in &txn.puts {
                t.insert(key.as_str(), encode(rev, value).as_slice())
                    .map_err(other)?;
                changes.push(Change {
                    key: key.clone(),
                    value: Some(value.clone()),
                });
            }
            meta.insert(REVISION, rev).map_err(other)?;
            let mut log = w.open_table(LOG).map_err(other)?;
            log.insert(rev, serde_json::to_vec(&changes).map_err(other)?.as_slice())
                .map_err(other)?;
            if rev > LOG_KEEP && rev.is_multiple_of(1024) {
                let cut = rev - LOG_KEEP;
                log.retain_in(..=cut, |_, _| false).map_err(other)?;
                meta.insert(COMPACTED, cut).map_err(other)?;
            }
            rev
        };
        w.commit().map_err(other)?;
        let mut n = self
            .notify
            .revision
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *n = rev;
        self.notify.changed.notify_all();
        Ok(rev)
    }

    fn keep_alive(
        &self,
        key: &str,
        value: Vec<u8>,
        _ttl: Duration,
    ) -> StoreResult<Box<dyn super::Lease>> {
        let mut t = Txn::default();
        t.put(key, value);
        self.commit(t)?;
        Ok(Box::new(Forever {
            store: RedbStore {
                db: self.db.clone(),
                notify: self.notify.clone(),
            },
            key: key.to_string(),
        }))
    }

    fn watch(&self, prefix: &str, after: Revision) -> StoreResult<Box<dyn Watch>> {
        let w = RedbWatch {
            db: self.db.clone(),
            notify: self.notify.clone(),
            prefix: prefix.to_string(),
            after,
        };
        // Refuse up front a start the log cannot serve.
        w.check_compacted()?;
        Ok(Box::new(w))
    }
}

struct RedbWatch {
    db: Arc<Database>,
    notify: Arc<Notify>,
    prefix: String,
    after: Revision,
}

impl RedbWatch {
    fn check_compacted(&self) -> StoreResult<()> {
        let r = self.db.begin_read().map_err(other)?;
        let meta = r.open_table(META).map_err(other)?;
        let compacted = meta
            .get(COMPACTED)
            .map_err(other)?
            .map(|g| g.value())
            .unwrap_or(0);
        if self.after < compacted {
            return Err(StoreError::Compacted { compacted });
        }
        Ok(())
    }

    /// Every logged change under the prefix after `self.after`.
    fn read_log(&mut self) -> StoreResult<Vec<Event>> {
        self.check_compacted()?;
        let r = self.db.begin_read().map_err(other)?;
        let log = r.open_table(LOG).map_err(other)?;
        let mut out = Vec::new();
        let mut last = self.after;
        for item in log.range(self.after + 1..).map_err(other)? {
            let (rev, raw) = item.map_err(other)?;
            let revision = rev.value();
            last = revision;
            let changes: Vec<Change> = serde_json::from_slice(raw.value()).map_err(other)?;
            for c in changes {
                if !c.key.starts_with(&self.prefix) {
                    continue;
                }
                out.push(match c.value {
                    Some(value) => Event::Put {
                        key: c.key,
                        value,
                        revision,
                    },
                    None => Event::Delete {
                        key: c.key,
                        revision,
                    },
                });
            }
        }
        self.after = last;
        Ok(out)
    }
}

impl Watch for RedbWatch {
    fn next(&mut self, timeout: Duration) -> StoreResult<Vec<Event>> {
        let deadline = Instant::now() + timeout;
        loop {
            let events = self.read_log()?;
            if !events.is_empty() {
                return Ok(events);
            }
            let mut rev = self
                .notify
                .revision
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            while *rev <= self.after {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(Vec::new());
                }
                rev = self
                    .notify
                    .changed
                    .wait_timeout(rev, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
    }

    fn revision(&self) -> Revision {
        self.after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(std::path::PathBuf);

    impl Dir {
        fn new(tag: &str) -> Self {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = std::env::temp_dir()
                .join(format!("dp-store-test-{tag}-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
        fn db(&self) -> std::path::PathBuf {
            self.0.join("db.redb")
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The shared conformance suite (`store/conformance.rs`) on a fresh
    /// file; `open` reopens the same file (a daemon restart).
    fn conform(tag: &str, test: crate::store::conformance::Test) {
        let dir = Dir::new(tag);
        let open = || Arc::new(RedbStore::open(&dir.db()).unwrap()) as Arc<dyn Store>;
        test(&open);
    }

    #[test]
    fn commit_is_atomic_and_list_is_prefix_scoped() {
        conform(
            "atomic",
            crate::store::conformance::commit_is_atomic_and_list_is_prefix_scoped,
        );
    }

    #[test]
    fn a_key_twice_in_one_commit_ends_as_its_last_put() {
        conform(
            "twice",
            crate::store::conformance::a_key_twice_in_one_commit_ends_as_its_last_put,
        );
    }

    #[test]
    fn a_guarded_commit_that_lost_the_race_is_refused_and_changes_nothing() {
        conform(
            "guard",
            crate::store::conformance::a_guarded_commit_that_lost_the_race_is_refused_and_changes_nothing,
        );
    }

    #[test]
    fn concurrent_claims_have_exactly_one_winner() {
        conform(
            "race",
            crate::store::conformance::concurrent_claims_have_exactly_one_winner,
        );
    }

    #[test]
    fn a_watch_sees_every_change_in_order_and_resumes_after_a_reopen() {
        conform(
            "watch",
            crate::store::conformance::a_watch_sees_every_change_in_order_and_resumes_after_a_reopen,
        );
    }

    #[test]
    fn a_kept_key_is_there_until_revoked() {
        conform(
            "lease",
            crate::store::conformance::a_kept_key_is_there_until_revoked,
        );
    }

    #[test]
    fn a_first_layout_file_is_carried_over() {
        let dir = Dir::new("migrate");
        {
            let db = Database::create(dir.db()).unwrap();
            let w = db.begin_write().unwrap();
            {
                let mut t = w.open_table(OBJECTS_V1).unwrap();
                t.insert("networks/a", &b"{\"x\":1}"[..]).unwrap();
            }
            w.commit().unwrap();
        }
        let s = RedbStore::open(&dir.db()).unwrap();
        let e = s.get("networks/a").unwrap().unwrap();
        assert_eq!((e.value.as_slice(), e.mod_revision), (&b"{\"x\":1}"[..], 1));
        // History before the migration cannot be replayed; after it, it can.
        assert!(matches!(
            s.watch("", 0).err(),
            Some(StoreError::Compacted { compacted: 1 })
        ));
        assert!(s.watch("", 1).is_ok());
    }
}
