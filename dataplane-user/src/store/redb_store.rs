//! The embedded default store: one redb file under `--state-dir`.

use std::path::Path;

use anyhow::{Context as _, Result};
use redb::{Database, ReadableDatabase as _, TableDefinition};

use super::{Store, Txn};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");

pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path)
            .with_context(|| format!("opening the state database {}", path.display()))?;
        // Make sure the table exists so that reads never fail on a fresh file.
        let w = db.begin_write()?;
        w.open_table(OBJECTS)?;
        w.commit()?;
        Ok(Self { db })
    }
}

impl Store for RedbStore {
    fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(OBJECTS)?;
        let mut out = Vec::new();
        for item in t.range(prefix..)? {
            let (k, v) = item?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn commit(&self, txn: Txn) -> Result<()> {
        let w = self.db.begin_write()?;
        {
            let mut t = w.open_table(OBJECTS)?;
            for key in &txn.deletes {
                t.remove(key.as_str())?;
            }
            for (key, value) in &txn.puts {
                t.insert(key.as_str(), value.as_slice())?;
            }
        }
        w.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_is_atomic_and_list_is_prefix_scoped() {
        let dir = std::env::temp_dir().join(format!("dp-store-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = RedbStore::open(&dir.join("db.redb")).unwrap();
        let mut t = Txn::default();
        t.put("networks/a", b"1".to_vec())
            .put("networks/b", b"2".to_vec())
            .put("networksX/c", b"3".to_vec())
            .put("containers/x", b"4".to_vec());
        s.commit(t).unwrap();
        let nets = s.list("networks/").unwrap();
        assert_eq!(nets.len(), 2);
        assert_eq!(nets[0], ("networks/a".into(), b"1".to_vec()));
        let mut t = Txn::default();
        t.delete("networks/a").put("networks/b", b"22".to_vec());
        s.commit(t).unwrap();
        assert_eq!(
            s.list("networks/").unwrap(),
            vec![("networks/b".into(), b"22".to_vec())]
        );
        drop(s);
        // Reopening keeps what was committed.
        let s = RedbStore::open(&dir.join("db.redb")).unwrap();
        assert_eq!(s.list("containers/").unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
