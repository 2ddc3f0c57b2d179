//! What every [`Store`] must do, as tests generic over the implementation:
//! `redb_store` and `etcd_store` run each of them on their own store.
//!
//! `open` gives a store on the same data every time it is called (the
//! embedded file reopened, or a new connection to the same etcd and root):
//! a daemon restart. Revisions are counted from the store's revision when
//! the test starts (an etcd starts at 1, and may be shared), so the checks
//! are the same for both.

use std::{sync::Arc, time::Duration};

use super::{Event, Listing, Store, StoreError, Txn};

pub type Open<'a> = &'a dyn Fn() -> Arc<dyn Store>;
/// One test of the suite.
pub type Test = fn(Open);

fn keys(l: &Listing) -> Vec<(&str, &[u8])> {
    l.entries
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_slice()))
        .collect()
}

pub fn commit_is_atomic_and_list_is_prefix_scoped(open: Open) {
    let s = open();
    let base = s.list("").unwrap().revision;
    let mut t = Txn::default();
    t.put("networks/a", b"1".to_vec())
        .put("networks/b", b"2".to_vec())
        .put("networksX/c", b"3".to_vec())
        .put("containers/x", b"4".to_vec());
    assert_eq!(s.commit(t).unwrap(), base + 1);
    let nets = s.list("networks/").unwrap();
    assert_eq!(nets.revision, base + 1);
    assert_eq!(
        keys(&nets),
        vec![("networks/a", &b"1"[..]), ("networks/b", &b"2"[..])]
    );
    let mut t = Txn::default();
    t.delete("networks/a").put("networks/b", b"22".to_vec());
    assert_eq!(s.commit(t).unwrap(), base + 2);
    assert_eq!(
        keys(&s.list("networks/").unwrap()),
        vec![("networks/b", &b"22"[..])]
    );
    drop(s);
    // Reopening keeps what was committed, and the revision.
    let s = open();
    assert_eq!(s.list("containers/").unwrap().entries.len(), 1);
    let b = s.get("networks/b").unwrap().unwrap();
    assert_eq!((b.value.as_slice(), b.mod_revision), (&b"22"[..], base + 2));
    assert_eq!(s.get("networks/a").unwrap(), None);
    assert_eq!(s.list("").unwrap().revision, base + 2);
    // An empty transaction changes nothing and answers the revision.
    assert_eq!(s.commit(Txn::default()).unwrap(), base + 2);
}

pub fn a_key_twice_in_one_commit_ends_as_its_last_put(open: Open) {
    let s = open();
    let mut t = Txn::default();
    t.put("k/a", b"old".to_vec()).put("k/b", b"b".to_vec());
    s.commit(t).unwrap();
    // Deletes apply before puts; the last put of a key wins.
    let mut t = Txn::default();
    t.delete("k/a")
        .put("k/a", b"1".to_vec())
        .put("k/a", b"2".to_vec())
        .delete("k/b")
        .delete("k/b");
    let rev = s.commit(t).unwrap();
    let a = s.get("k/a").unwrap().unwrap();
    assert_eq!((a.value.as_slice(), a.mod_revision), (&b"2"[..], rev));
    assert_eq!(s.get("k/b").unwrap(), None);
}

pub fn a_guarded_commit_that_lost_the_race_is_refused_and_changes_nothing(open: Open) {
    let s = open();
    // Two writers both saw "ips/10.0.0.2" free and both claim it.
    let claim = |who: &str| {
        let mut t = Txn::default();
        t.absent("ips/10.0.0.2")
            .put("ips/10.0.0.2", who.as_bytes().to_vec())
            .put(format!("endpoints/{who}"), b"{}".to_vec());
        t
    };
    assert!(s.commit(claim("a")).is_ok());
    match s.commit(claim("b")) {
        Err(StoreError::Conflict { key }) => assert_eq!(key, "ips/10.0.0.2"),
        other => panic!("the second claim must lose: {other:?}"),
    }
    assert_eq!(s.get("ips/10.0.0.2").unwrap().unwrap().value, b"a");
    assert_eq!(s.get("endpoints/b").unwrap(), None, "nothing of b landed");
    // Compare-and-swap on a revision read earlier.
    let read = s.get("ips/10.0.0.2").unwrap().map(|e| e.mod_revision);
    let mut t = Txn::default();
    t.unchanged("ips/10.0.0.2", read).delete("ips/10.0.0.2");
    let rev = s.commit(t).unwrap();
    let mut stale = Txn::default();
    stale.unchanged("ips/10.0.0.2", read).put("x", vec![]);
    assert!(matches!(s.commit(stale), Err(StoreError::Conflict { .. })));
    assert_eq!(
        s.list("").unwrap().revision,
        rev,
        "a refused commit adds no revision"
    );
    // Of several guards, the conflict names one that failed.
    let mut t = Txn::default();
    t.absent("free/1")
        .unchanged(
            "endpoints/a",
            s.get("endpoints/a").unwrap().map(|e| e.mod_revision),
        )
        .absent("endpoints/a")
        .put("y", vec![]);
    match s.commit(t) {
        Err(StoreError::Conflict { key }) => assert_eq!(key, "endpoints/a"),
        other => panic!("the guard on endpoints/a must fail: {other:?}"),
    }
}

pub fn concurrent_claims_have_exactly_one_winner(open: Open) {
    let s = open();
    let wins: usize = (0..8)
        .map(|i| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut t = Txn::default();
                t.absent("ports/tcp/8080")
                    .put("ports/tcp/8080", format!("{i}").into_bytes());
                s.commit(t).is_ok()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| usize::from(h.join().unwrap()))
        .sum();
    assert_eq!(wins, 1);
}

pub fn a_watch_sees_every_change_in_order_and_resumes_after_a_reopen(open: Open) {
    let s = open();
    let start = s.list("networks/").unwrap().revision;
    let mut w = s.watch("networks/", start).unwrap();
    assert!(w.next(Duration::from_millis(20)).unwrap().is_empty());
    let mut t = Txn::default();
    t.put("networks/a", b"1".to_vec())
        .put("other/x", b"x".to_vec());
    s.commit(t).unwrap();
    let mut t = Txn::default();
    t.delete("networks/a");
    s.commit(t).unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        got.extend(w.next(Duration::from_secs(5)).unwrap());
    }
    assert_eq!(
        got,
        vec![
            Event::Put {
                key: "networks/a".into(),
                value: b"1".to_vec(),
                revision: start + 1
            },
            Event::Delete {
                key: "networks/a".into(),
                revision: start + 2
            },
        ]
    );
    assert_eq!(w.revision(), start + 2);
    // A watcher blocked in `next` is woken by a commit from another thread.
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || {
            let mut t = Txn::default();
            t.put("networks/b", b"2".to_vec());
            s.commit(t).unwrap();
        })
    };
    let woke = w.next(Duration::from_secs(5)).unwrap();
    writer.join().unwrap();
    assert_eq!(woke.len(), 1);
    assert_eq!(woke[0].key(), "networks/b");
    let seen = w.revision();
    drop(w);
    // Changes made while nobody watched are replayed after the store is
    // reopened (a daemon restart).
    let mut t = Txn::default();
    t.put("networks/c", b"3".to_vec());
    s.commit(t).unwrap();
    drop(s);
    let s = open();
    let mut w = s.watch("networks/", seen).unwrap();
    let again = w.next(Duration::from_secs(5)).unwrap();
    assert_eq!(
        again,
        vec![Event::Put {
            key: "networks/c".into(),
            value: b"3".to_vec(),
            revision: start + 4
        }]
    );
}

pub fn a_kept_key_is_there_until_revoked(open: Open) {
    let s = open();
    let lease = s
        .keep_alive("hosts/a", b"up".to_vec(), Duration::from_secs(30))
        .unwrap();
    assert!(lease.alive());
    assert_eq!(s.get("hosts/a").unwrap().unwrap().value, b"up");
    lease.revoke();
    assert_eq!(s.get("hosts/a").unwrap(), None, "revoke deletes at once");
}
