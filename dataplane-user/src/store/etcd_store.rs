//! The cluster store: the same [`Store`] on an etcd (v3 API, 3.4 or later),
//! so that the daemons of several hosts share one truth.
//!
//! Every logical key `K` is the etcd key `root + K`, so that two clusters
//! can share one etcd. Revisions are etcd's own.
//!
//! etcd bounds a transaction (128 operations and 1.5 MiB by default,
//! `--max-txn-ops`, `--max-request-bytes`): a larger commit fails with
//! etcd's own message, nothing of it applied.
//!
//! etcd-client is async; callers of a [`Store`] are plain threads, tokio
//! `spawn_blocking` closures, perhaps even async tasks. So the store owns a
//! small runtime of its own: every operation is spawned there and the
//! caller waits on a std channel with a timeout. Nothing ever calls
//! `block_on` on the caller's thread (that panics inside a runtime).

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Result};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, KeyValue,
    PutOptions, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::oneshot;

use super::{
    Entry, Event, Expect, Lease, Listing, Revision, Store, StoreError, StoreResult, Txn, Watch,
};

/// The bound on every call (connect, get, list, commit, watch creation).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Parses `etcd://HOST:PORT[,HOST:PORT...]` into the endpoints etcd-client
/// takes (`http://HOST:PORT`).
pub fn parse_store_url(s: &str) -> Result<Vec<String>> {
    let rest = s
        .strip_prefix("etcd://")
        .ok_or_else(|| anyhow!("store URL {s:?}: expected etcd://HOST:PORT[,HOST:PORT...]"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        bail!("store URL {s:?} names no etcd endpoint (etcd://HOST:PORT[,HOST:PORT...])");
    }
    rest.split(',')
        .map(|hp| {
            let (host, port) = hp
                .rsplit_once(':')
                .ok_or_else(|| anyhow!("store URL {s:?}: endpoint {hp:?} is not HOST:PORT"))?;
            let bare = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            if bare.is_empty()
                || bare.contains(['/', '@', '?', '#', ' '])
                || (bare.contains(':') && bare.len() == host.len())
            {
                bail!("store URL {s:?}: endpoint {hp:?} has no valid host (IPv6 goes in brackets)");
            }
            match port.parse::<u16>() {
                Ok(p) if p != 0 => Ok(format!("http://{host}:{p}")),
                _ => bail!("store URL {s:?}: endpoint {hp:?} has no valid port (1-65535)"),
            }
        })
        .collect()
}

/// The store's runtime; shut down without waiting when the last handle
/// (store, watch or lease) goes, from whatever context that happens in.
struct Rt(Option<tokio::runtime::Runtime>);

impl Rt {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("runtime present until drop")
            .handle()
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// What every call needs: the runtime's handle, the client, where. Tasks
/// on the runtime hold this, never the runtime itself (which the store's,
/// watches' and leases' own handles keep, as an `Arc<Rt>`).
#[derive(Clone)]
struct Conn {
    handle: tokio::runtime::Handle,
    client: Client,
    root: String,
    /// `127.0.0.1:2379,...`, for messages.
    endpoints: String,
    timeout: Duration,
}

impl Conn {
    fn unreachable(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Other(anyhow!(
            "etcd at {} is unreachable: {what}: {e}",
            self.endpoints
        ))
    }

    fn failed(&self, what: &str, e: etcd_client::Error) -> StoreError {
        use etcd_client::Error as E;
        let down = match &e {
            E::TransportError(_) | E::IoError(_) => true,
            // gRPC codes Unknown (2), DeadlineExceeded (4), Unavailable (14).
            E::GRpcStatus(s) => matches!(i32::from(s.code()), 2 | 4 | 14),
            _ => false,
        };
        if down {
            self.unreachable(what, e)
        } else {
            StoreError::Other(anyhow!("etcd at {}: {what} failed: {e}", self.endpoints))
        }
    }

    /// Runs `fut` on the store's runtime; the caller waits at most the
    /// timeout (plus a little, for the runtime to hand the answer over).
    fn run<T, F>(&self, what: &str, fut: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        let timeout = self.timeout;
        self.handle.spawn(async move {
            let _ = tx.send(tokio::time::timeout(timeout, fut).await);
        });
        match rx.recv_timeout(timeout + Duration::from_millis(500)) {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(self.failed(what, e)),
            Ok(Err(_)) | Err(_) => {
                Err(self.unreachable(what, format!("no answer within {:?}", self.timeout)))
            }
        }
    }

    fn physical(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.root).into_bytes()
    }

    fn logical(&self, key: &[u8]) -> StoreResult<String> {
        let k = std::str::from_utf8(key)
            .ok()
            .and_then(|k| k.strip_prefix(self.root.as_str()))
            .ok_or_else(|| {
                StoreError::Other(anyhow!(
                    "etcd at {}: key {:?} is not a UTF-8 key under {:?}",
                    self.endpoints,
                    String::from_utf8_lossy(key),
                    self.root
                ))
            })?;
        Ok(k.to_string())
    }

    fn entry(&self, kv: &KeyValue) -> StoreResult<Entry> {
        Ok(Entry {
            key: self.logical(kv.key())?,
            value: kv.value().to_vec(),
            mod_revision: rev(kv.mod_revision()),
        })
    }
}

fn rev(r: i64) -> Revision {
    u64::try_from(r).unwrap_or(0)
}

fn header_rev(h: Option<&etcd_client::ResponseHeader>) -> Revision {
    h.map_or(0, |h| rev(h.revision()))
}

pub struct EtcdStore {
    rt: Arc<Rt>,
    conn: Conn,
}

impl EtcdStore {
    /// Connects to `endpoints` (`http://HOST:PORT`, as [`parse_store_url`]
    /// gives them) and checks that etcd answers; keys live under `root`.
    pub fn connect(endpoints: &[String], root: &str) -> Result<EtcdStore> {
        Self::connect_with_timeout(endpoints, root, DEFAULT_TIMEOUT)
    }

    /// [`Self::connect`] with another bound on every call.
    pub fn connect_with_timeout(
        endpoints: &[String],
        root: &str,
        timeout: Duration,
    ) -> Result<EtcdStore> {
        if endpoints.is_empty() {
            bail!("no etcd endpoints given");
        }
        let names = endpoints
            .iter()
            .map(|e| {
                e.trim_start_matches("http://")
                    .trim_start_matches("https://")
            })
            .collect::<Vec<_>>()
            .join(",");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("etcd-store")
            .enable_all()
            .build()
            .map_err(|e| anyhow!("starting the etcd client's runtime: {e}"))?;
        let rt = Arc::new(Rt(Some(rt)));
        let opts = ConnectOptions::new()
            .with_connect_timeout(timeout)
            // HTTP/2 pings find a dead server under an idle watch stream.
            .with_keep_alive(Duration::from_secs(2), timeout)
            .with_keep_alive_while_idle(true);
        let eps = endpoints.to_vec();
        let (tx, rx) = mpsc::sync_channel(1);
        rt.handle().spawn(async move {
            let _ = tx.send(Client::connect(eps, Some(opts)).await);
        });
        let client = match rx.recv_timeout(timeout) {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => bail!("etcd at {names}: cannot set up a client: {e}"),
            Err(_) => bail!("etcd at {names} is unreachable: no client within {timeout:?}"),
        };
        let conn = Conn {
            handle: rt.handle().clone(),
            client,
            root: root.to_string(),
            endpoints: names,
            timeout,
        };
        let s = EtcdStore { rt, conn };
        // A first call, so that a wrong address fails here and not later.
        s.ping().map_err(anyhow::Error::from)?;
        Ok(s)
    }

    /// Compacts etcd's history up to `revision` (tests; an operator's tool).
    pub fn compact(&self, revision: Revision) -> StoreResult<()> {
        let mut kv = self.conn.client.kv_client();
        let r = i64::try_from(revision).map_err(|e| StoreError::Other(e.into()))?;
        self.conn
            .run("compact", async move { kv.compact(r, None).await })
            .map(|_| ())
    }

    /// One cheap read: etcd answers.
    fn ping(&self) -> StoreResult<()> {
        let key = self.conn.physical("");
        let mut kv = self.conn.client.kv_client();
        let opts = GetOptions::new().with_count_only();
        self.conn
            .run("connecting", async move { kv.get(key, Some(opts)).await })
            .map(|_| ())
    }
}

impl Store for EtcdStore {
    fn get(&self, key: &str) -> StoreResult<Option<Entry>> {
        let k = self.conn.physical(key);
        let mut kv = self.conn.client.kv_client();
        let r = self.conn.run("get", async move { kv.get(k, None).await })?;
        r.kvs().first().map(|kv| self.conn.entry(kv)).transpose()
    }

    fn list(&self, prefix: &str) -> StoreResult<Listing> {
        // etcd ranges are in key (byte) order, as the trait asks.
        let key = self.conn.physical(prefix);
        let opts = GetOptions::new().with_prefix();
        let mut kv = self.conn.client.kv_client();
        let r = self
            .conn
            .run("list", async move { kv.get(key, Some(opts)).await })?;
        let entries = r
            .kvs()
            .iter()
            .map(|kv| self.conn.entry(kv))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Listing {
            revision: header_rev(r.header()),
            entries,
        })
    }

    fn commit(&self, txn: Txn) -> StoreResult<Revision> {
        let compares: Vec<Compare> = txn
            .guards
            .iter()
            .map(|(k, e)| match e {
                Expect::Absent => {
                    Compare::create_revision(self.conn.physical(k), CompareOp::Equal, 0)
                }
                Expect::Revision(r) => Compare::mod_revision(
                    self.conn.physical(k),
                    CompareOp::Equal,
                    i64::try_from(*r).unwrap_or(i64::MAX),
                ),
            })
            .collect();
        // etcd refuses a key twice in one txn; the trait's meaning is
        // "deletes, then puts, in order": the last put of a key wins and a
        // put overrides a delete of the same key.
        let mut puts: Vec<(&String, &Vec<u8>)> = Vec::new();
        for (k, v) in txn.puts.iter().rev() {
            if !puts.iter().any(|(p, _)| *p == k) {
                puts.push((k, v));
            }
        }
        puts.reverse();
        let mut ops: Vec<TxnOp> = Vec::new();
        let mut deleted: Vec<&String> = Vec::new();
        for k in &txn.deletes {
            if !deleted.contains(&k) && !puts.iter().any(|(p, _)| *p == k) {
                deleted.push(k);
                ops.push(TxnOp::delete(self.conn.physical(k), None::<DeleteOptions>));
            }
        }
        for (k, v) in puts {
            ops.push(TxnOp::put(
                self.conn.physical(k),
                v.clone(),
                None::<PutOptions>,
            ));
        }
        // When a guard fails, read every guarded key in the same txn, so that
        // the conflict names a guard that really failed.
        let reads: Vec<TxnOp> = txn
            .guards
            .iter()
            .map(|(k, _)| {
                TxnOp::get(
                    self.conn.physical(k),
                    Some(GetOptions::new().with_keys_only()),
                )
            })
            .collect();
        let t = etcd_client::Txn::new()
            .when(compares)
            .and_then(ops)
            .or_else(reads);
        let mut kv = self.conn.client.kv_client();
        let r = self.conn.run("commit", async move { kv.txn(t).await })?;
        if r.succeeded() {
            return Ok(header_rev(r.header()));
        }
        let found = r.op_responses();
        for (i, (key, expect)) in txn.guards.iter().enumerate() {
            let kv = match found.get(i) {
                Some(TxnOpResponse::Get(g)) => g.kvs().first().cloned(),
                _ => None,
            };
            let holds = match expect {
                Expect::Absent => kv.is_none(),
                Expect::Revision(r) => kv.is_some_and(|kv| rev(kv.mod_revision()) == *r),
            };
            if !holds {
                return Err(StoreError::Conflict { key: key.clone() });
            }
        }
        Err(StoreError::Other(anyhow!(
            "etcd at {}: the commit's guards failed, yet every guarded key reads as expected",
            self.conn.endpoints
        )))
    }

    fn watch(&self, prefix: &str, after: Revision) -> StoreResult<Box<dyn Watch>> {
        let mut w = EtcdWatch {
            _rt: self.rt.clone(),
            conn: self.conn.clone(),
            prefix: prefix.to_string(),
            after,
            pump: None,
        };
        // Create it now, so that an unreachable etcd fails here already.
        w.start(self.conn.timeout)?;
        Ok(Box::new(w))
    }

    fn keep_alive(&self, key: &str, value: Vec<u8>, ttl: Duration) -> StoreResult<Box<dyn Lease>> {
        EtcdLease::start(self.rt.clone(), self.conn.clone(), key, value, ttl)
            .map(|l| Box::new(l) as Box<dyn Lease>)
    }
}

/// What the watch's pump task hands to [`EtcdWatch::next`].
enum Msg {
    /// The etcd watch exists (the first message of every pump).
    Created,
    Events(Vec<Event>),
    Compacted(Revision),
    /// The stream broke or could not be made; the pump has ended.
    Broken(String),
}

struct Pump {
    rx: mpsc::Receiver<Msg>,
    created: bool,
    /// Messages `start` read past `Created` (none in practice).
    pending: std::collections::VecDeque<Msg>,
    /// Ends the pump task when the watch goes.
    _stop: oneshot::Sender<()>,
}

struct EtcdWatch {
    _rt: Arc<Rt>,
    conn: Conn,
    prefix: String,
    after: Revision,
    pump: Option<Pump>,
}

impl EtcdWatch {
    /// Starts a pump from `after + 1` and waits (at most `wait`) until etcd
    /// has created the watch.
    fn start(&mut self, wait: Duration) -> StoreResult<()> {
        let (tx, rx) = mpsc::channel();
        let (stop, stopped) = oneshot::channel();
        let conn = self.conn.clone();
        let key = conn.physical(&self.prefix);
        let start = i64::try_from(self.after + 1).unwrap_or(i64::MAX);
        self.conn.handle.spawn(pump(conn, key, start, tx, stopped));
        self.pump = Some(Pump {
            rx,
            created: false,
            pending: Default::default(),
            _stop: stop,
        });
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(p) = self.pump.as_mut() else {
                return Ok(());
            };
            if p.created {
                return Ok(());
            }
            match p.rx.recv_timeout(left) {
                Ok(Msg::Created) => p.created = true,
                Ok(Msg::Broken(e)) => {
                    self.pump = None;
                    return Err(self.conn.unreachable("watching", e));
                }
                // The pump sends Created first; anything else waits for next().
                Ok(m) => {
                    p.created = true;
                    p.pending.push_back(m);
                }
                Err(_) => {
                    self.pump = None;
                    return Err(self
                        .conn
                        .unreachable("watching", format!("no watch created within {wait:?}")));
                }
            }
        }
    }
}

async fn pump(
    conn: Conn,
    key: Vec<u8>,
    start: i64,
    tx: mpsc::Sender<Msg>,
    mut stopped: oneshot::Receiver<()>,
) {
    let work = async {
        let opts = WatchOptions::new().with_prefix().with_start_revision(start);
        let mut wc = conn.client.watch_client();
        let mut stream = match tokio::time::timeout(conn.timeout, wc.watch(key, Some(opts))).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Msg::Broken(e.to_string()),
            Err(_) => return Msg::Broken(format!("no watch within {:?}", conn.timeout)),
        };
        let mut created = false;
        loop {
            let r = if created {
                stream.message().await
            } else {
                match tokio::time::timeout(conn.timeout, stream.message()).await {
                    Ok(r) => r,
                    Err(_) => return Msg::Broken(format!("no watch within {:?}", conn.timeout)),
                }
            };
            let resp = match r {
                Ok(Some(resp)) => resp,
                Ok(None) => return Msg::Broken("the watch stream ended".into()),
                Err(e) => return Msg::Broken(e.to_string()),
            };
            // Whatever etcd answers first follows the watch's creation.
            if !created {
                created = true;
                if tx.send(Msg::Created).is_err() {
                    return Msg::Broken(String::new());
                }
            }
            if resp.compact_revision() > 0 {
                return Msg::Compacted(rev(resp.compact_revision()));
            }
            if resp.canceled() {
                return Msg::Broken(format!(
                    "etcd cancelled the watch: {}",
                    resp.cancel_reason()
                ));
            }
            let mut events = Vec::with_capacity(resp.events().len());
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let key = match conn.logical(kv.key()) {
                    Ok(k) => k,
                    Err(e) => return Msg::Broken(e.to_string()),
                };
                let revision = rev(kv.mod_revision());
                events.push(match ev.event_type() {
                    EventType::Put => Event::Put {
                        key,
                        value: kv.value().to_vec(),
                        revision,
                    },
                    EventType::Delete => Event::Delete { key, revision },
                });
            }
            if !events.is_empty() && tx.send(Msg::Events(events)).is_err() {
                return Msg::Broken(String::new());
            }
        }
    };
    tokio::select! {
        last = work => { let _ = tx.send(last); }
        _ = &mut stopped => {}
    }
}

impl Watch for EtcdWatch {
    fn next(&mut self, timeout: Duration) -> StoreResult<Vec<Event>> {
        let deadline = Instant::now() + timeout;
        // One transparent re-creation per call: a stream that broke after
        // it worked (etcd restarted) resumes from the last revision given.
        let mut recreated = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.pump.is_none() {
                if left.is_zero() {
                    return Ok(Vec::new());
                }
                self.start(left)?;
                recreated = true;
                continue;
            }
            let p = self.pump.as_mut().expect("checked above");
            let got = match p.pending.pop_front() {
                Some(m) => Ok(m),
                None => p.rx.recv_timeout(left),
            };
            match got {
                Ok(Msg::Created) => p.created = true,
                Ok(Msg::Events(events)) => {
                    // Never give a revision twice, whatever etcd resends.
                    let fresh: Vec<Event> = events
                        .into_iter()
                        .filter(|e| e.revision() > self.after)
                        .collect();
                    if let Some(last) = fresh.last() {
                        self.after = last.revision();
                        return Ok(fresh);
                    }
                }
                Ok(Msg::Compacted(compacted)) => {
                    self.pump = None;
                    return Err(StoreError::Compacted { compacted });
                }
                Ok(Msg::Broken(e)) => {
                    self.pump = None;
                    if recreated || left.is_zero() {
                        return Err(self.conn.unreachable("watching", e));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => return Ok(Vec::new()),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.pump = None;
                    if recreated {
                        return Err(self.conn.unreachable("watching", "the watch ended"));
                    }
                }
            }
        }
    }

    fn revision(&self) -> Revision {
        self.after
    }
}

/// State shared by a lease handle and its renewing task.
struct LeaseState {
    /// The lease the key is attached to now.
    id: AtomicI64,
    /// Nanoseconds after `base` until which the lease is known to hold.
    until: AtomicU64,
    base: Instant,
    /// etcd said the lease is gone (until a new one is granted).
    lost: AtomicBool,
}

impl LeaseState {
    fn alive(&self) -> bool {
        let now = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        !self.lost.load(Ordering::Acquire) && now < self.until.load(Ordering::Acquire)
    }

    /// The lease was renewed (or granted) at `at` for `ttl` seconds.
    fn renewed(&self, at: Instant, ttl: i64) {
        let until = at.saturating_duration_since(self.base) + Duration::from_secs(rev(ttl));
        self.until.store(
            u64::try_from(until.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Release,
        );
        self.lost.store(false, Ordering::Release);
    }
}

struct EtcdLease {
    _rt: Arc<Rt>,
    conn: Conn,
    state: Arc<LeaseState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Grants a lease of `ttl` seconds and puts `key` on it, in one go.
async fn grant_and_put(
    client: &Client,
    key: Vec<u8>,
    value: Vec<u8>,
    ttl: i64,
) -> Result<(i64, i64), etcd_client::Error> {
    let mut lc = client.lease_client();
    let g = lc.grant(ttl, None).await?;
    let mut kv = client.kv_client();
    if let Err(e) = kv
        .put(key, value, Some(PutOptions::new().with_lease(g.id())))
        .await
    {
        let _ = lc.revoke(g.id()).await;
        return Err(e);
    }
    Ok((g.id(), g.ttl()))
}

impl EtcdLease {
    fn start(
        rt: Arc<Rt>,
        conn: Conn,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> StoreResult<Self> {
        let secs = i64::try_from(ttl.as_secs_f64().ceil() as u64)
            .unwrap_or(i64::MAX)
            .max(1);
        let k = conn.physical(key);
        let client = conn.client.clone();
        let (kk, vv) = (k.clone(), value.clone());
        let asked = Instant::now();
        let (id, granted) = conn.run("granting a lease", async move {
            grant_and_put(&client, kk, vv, secs).await
        })?;
        let state = Arc::new(LeaseState {
            id: AtomicI64::new(id),
            until: AtomicU64::new(0),
            base: asked,
            lost: AtomicBool::new(false),
        });
        state.renewed(asked, granted);
        let (stop, stopped) = oneshot::channel();
        let task = conn.handle.spawn(renew(
            conn.client.clone(),
            conn.timeout,
            state.clone(),
            k,
            value,
            secs,
            granted,
            stopped,
        ));
        Ok(EtcdLease {
            _rt: rt,
            conn,
            state,
            stop: Some(stop),
            task: Some(task),
        })
    }
}

/// Renews the lease every third of its ttl; when etcd says it is gone
/// (expired while this host could not reach etcd), grants a new one and
/// puts the key again.
#[allow(clippy::too_many_arguments)]
async fn renew(
    client: Client,
    timeout: Duration,
    state: Arc<LeaseState>,
    key: Vec<u8>,
    value: Vec<u8>,
    secs: i64,
    granted: i64,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut ttl = granted.max(1);
    let mut keeper: Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)> = None;
    let work = async {
        loop {
            let tick = Duration::from_millis(u64::try_from(ttl).unwrap_or(1) * 1000 / 3);
            tokio::time::sleep(tick).await;
            let at = Instant::now();
            let attempt = async {
                if state.lost.load(Ordering::Acquire) {
                    let (id, g) = grant_and_put(&client, key.clone(), value.clone(), secs).await?;
                    state.id.store(id, Ordering::Release);
                    keeper = None;
                    return Ok::<i64, etcd_client::Error>(g);
                }
                if keeper.is_none() {
                    let id = state.id.load(Ordering::Acquire);
                    keeper = Some(client.lease_client().keep_alive(id).await?);
                }
                let (k, s) = keeper.as_mut().expect("set above");
                k.keep_alive().await?;
                match s.message().await? {
                    Some(r) => Ok(r.ttl()),
                    None => Err(etcd_client::Error::LeaseKeepAliveError(
                        "the keep-alive stream ended".into(),
                    )),
                }
            };
            match tokio::time::timeout(timeout, attempt).await {
                Ok(Ok(t)) if t > 0 => {
                    ttl = t;
                    state.renewed(at, t);
                }
                Ok(Ok(_)) => {
                    // etcd no longer knows the lease: the key went with it.
                    state.lost.store(true, Ordering::Release);
                    keeper = None;
                    ttl = 1;
                }
                Ok(Err(_)) | Err(_) => {
                    // Unreachable: retry soon; `alive` turns false by itself
                    // when the last renewal's ttl runs out.
                    keeper = None;
                    ttl = 1;
                }
            }
        }
    };
    tokio::select! {
        () = work => {}
        _ = &mut stopped => {}
    }
}

impl Lease for EtcdLease {
    fn alive(&self) -> bool {
        self.state.alive()
    }

    fn revoke(mut self: Box<Self>) {
        self.stop.take();
        let task = self.task.take();
        let state = self.state.clone();
        let client = self.conn.client.clone();
        let r = self.conn.run("revoking a lease", async move {
            if let Some(t) = task {
                // Stopped above; wait so that no re-grant races the revoke.
                let _ = t.await;
            }
            client
                .lease_client()
                .revoke(state.id.load(Ordering::Acquire))
                .await
                .map(|_| ())
        });
        if let Err(e) = r {
            tracing::warn!("{e:#} (the key expires with its lease)");
        }
        self.state.lost.store(true, Ordering::Release);
    }
}

impl Drop for EtcdLease {
    fn drop(&mut self) {
        // Dropping `stop` ends the renewing task; the key expires with ttl.
        self.stop.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{store::conformance, testutil::EtcdServer};

    fn store(etcd: &EtcdServer, root: &str) -> EtcdStore {
        EtcdStore::connect_with_timeout(&[etcd.endpoint()], root, Duration::from_secs(2)).unwrap()
    }

    fn put(s: &dyn Store, key: &str, value: &[u8]) -> StoreResult<Revision> {
        let mut t = Txn::default();
        t.put(key, value.to_vec());
        s.commit(t)
    }

    /// Polls `f` every 50 ms until it holds or `limit` has passed.
    fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + limit;
        loop {
            if f() {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn store_urls_parse_or_say_why_not() {
        assert_eq!(
            parse_store_url("etcd://10.0.0.1:2379").unwrap(),
            ["http://10.0.0.1:2379"]
        );
        assert_eq!(
            parse_store_url("etcd://a.example:2379,[fd00::1]:23790/").unwrap(),
            ["http://a.example:2379", "http://[fd00::1]:23790"]
        );
        for (bad, says) in [
            ("http://10.0.0.1:2379", "expected etcd://"),
            ("etcd://", "names no etcd endpoint"),
            ("etcd://10.0.0.1", "is not HOST:PORT"),
            ("etcd://10.0.0.1:0", "no valid port"),
            ("etcd://10.0.0.1:99999", "no valid port"),
            ("etcd://10.0.0.1:2379,", "is not HOST:PORT"),
            ("etcd://:2379", "no valid host"),
            ("etcd://fd00::1:2379", "no valid host"),
            ("etcd://u@h:2379", "no valid host"),
            ("redb:///var/lib/x", "expected etcd://"),
        ] {
            let e = parse_store_url(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn the_conformance_suite_passes_on_etcd_and_roots_stay_apart() {
        let etcd = EtcdServer::start("conform");
        let tests: [(&str, conformance::Test); 6] = [
            (
                "/atomic/",
                conformance::commit_is_atomic_and_list_is_prefix_scoped,
            ),
            (
                "/twice/",
                conformance::a_key_twice_in_one_commit_ends_as_its_last_put,
            ),
            (
                "/guard/",
                conformance::a_guarded_commit_that_lost_the_race_is_refused_and_changes_nothing,
            ),
            (
                "/race/",
                conformance::concurrent_claims_have_exactly_one_winner,
            ),
            (
                "/watch/",
                conformance::a_watch_sees_every_change_in_order_and_resumes_after_a_reopen,
            ),
            ("/lease/", conformance::a_kept_key_is_there_until_revoked),
        ];
        for (root, test) in tests {
            let open = || Arc::new(store(&etcd, root)) as Arc<dyn Store>;
            test(&open);
        }
        // Every test wrote its keys under its own root only.
        let atomic = store(&etcd, "/atomic/");
        let keys: Vec<String> = atomic
            .list("")
            .unwrap()
            .entries
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, ["containers/x", "networks/b", "networksX/c"]);
        assert_eq!(store(&etcd, "/nothing/").list("").unwrap().entries, []);
    }

    #[test]
    fn calls_work_and_the_store_drops_inside_an_async_context() {
        let etcd = EtcdServer::start("async");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let endpoint = etcd.endpoint();
        // Connecting, committing, watching and dropping from inside a task
        // of another runtime: no nested block_on, no panic on drop.
        let got = rt.block_on(async move {
            let s = EtcdStore::connect(&[endpoint], "/dp/").unwrap();
            let mut w = s.watch("k/", s.list("").unwrap().revision).unwrap();
            put(&s, "k/a", b"1").unwrap();
            let evs = w.next(Duration::from_secs(5)).unwrap();
            let lease = s
                .keep_alive("hosts/a", b"up".to_vec(), Duration::from_secs(5))
                .unwrap();
            drop((s, w, lease));
            evs
        });
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].key(), "k/a");
    }

    #[test]
    fn two_daemons_on_one_etcd_see_each_other_and_cannot_both_claim() {
        let etcd = EtcdServer::start("two");
        let (a, b) = (store(&etcd, "/dp/"), store(&etcd, "/dp/"));
        let mut wb = b.watch("ips/", b.list("").unwrap().revision).unwrap();
        let claim = |who: &[u8]| {
            let mut t = Txn::default();
            t.absent("ips/10.0.0.2").put("ips/10.0.0.2", who.to_vec());
            t
        };
        let rev = a.commit(claim(b"a")).unwrap();
        assert!(matches!(
            b.commit(claim(b"b")),
            Err(StoreError::Conflict { key }) if key == "ips/10.0.0.2"
        ));
        assert_eq!(
            wb.next(Duration::from_secs(5)).unwrap(),
            [Event::Put {
                key: "ips/10.0.0.2".into(),
                value: b"a".to_vec(),
                revision: rev
            }]
        );
        assert_eq!(b.get("ips/10.0.0.2").unwrap().unwrap().mod_revision, rev);
        // A key kept alive by one is seen by the other, and goes when revoked.
        let lease = a
            .keep_alive("nodes/a", b"10.1.0.1".to_vec(), Duration::from_secs(5))
            .unwrap();
        assert_eq!(b.list("nodes/").unwrap().entries.len(), 1);
        lease.revoke();
        assert_eq!(b.list("nodes/").unwrap().entries.len(), 0);
    }

    #[test]
    fn a_commit_over_etcds_txn_limit_fails_whole_with_its_reason() {
        let etcd = EtcdServer::start("big");
        let s = store(&etcd, "/dp/");
        let mut t = Txn::default();
        for i in 0..200 {
            t.put(format!("k/{i}"), b"x".to_vec());
        }
        let e = s.commit(t).unwrap_err().to_string();
        assert!(e.contains("too many operations"), "{e}");
        assert!(
            e.contains(&format!("etcd at 127.0.0.1:{}", etcd.client_port())),
            "{e}"
        );
        assert_eq!(s.list("k/").unwrap().entries, []);
    }

    #[test]
    fn nothing_listening_is_a_clear_error_in_bounded_time() {
        let port = crate::testutil::free_port();
        let t = Instant::now();
        let e = EtcdStore::connect_with_timeout(
            &[format!("http://127.0.0.1:{port}")],
            "/x/",
            Duration::from_secs(1),
        )
        .err()
        .expect("nothing listens there");
        let msg = format!("{e:#}");
        assert!(
            msg.contains(&format!("etcd at 127.0.0.1:{port} is unreachable")),
            "{msg}"
        );
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }

    #[test]
    fn writes_fail_clearly_while_etcd_is_down_and_work_when_it_is_back() {
        let mut etcd = EtcdServer::start("down");
        let s = store(&etcd, "/dp/");
        let before = put(&s, "networks/a", b"1").unwrap();
        etcd.stop();
        let t = Instant::now();
        let e = put(&s, "networks/b", b"2").unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, StoreError::Other(_)), "{msg}");
        let name = format!("etcd at 127.0.0.1:{} is unreachable", etcd.client_port());
        assert!(msg.contains(&name), "{msg}");
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
        let e = s.get("networks/a").unwrap_err().to_string();
        assert!(e.contains(&name), "{e}");
        etcd.resume();
        // The same store works again once etcd is back, with its data.
        assert!(eventually(Duration::from_secs(10), || put(
            &s,
            "networks/b",
            b"2"
        )
        .is_ok()));
        assert_eq!(s.get("networks/a").unwrap().unwrap().mod_revision, before);
        assert_eq!(s.list("networks/").unwrap().entries.len(), 2);
    }

    #[test]
    fn a_watch_resumes_across_an_etcd_restart_without_losing_or_repeating() {
        let mut etcd = EtcdServer::start("watch");
        let s = store(&etcd, "/dp/");
        let start = s.list("").unwrap().revision;
        let mut w = s.watch("n/", start).unwrap();
        for i in 0..3 {
            put(&s, &format!("n/{i}"), b"x").unwrap();
        }
        let mut got: Vec<Event> = Vec::new();
        // Take only part of what happened before the outage.
        while got.is_empty() {
            got.extend(w.next(Duration::from_secs(5)).unwrap());
        }
        etcd.stop();
        // Whatever was already received is still delivered; then a clear
        // error, within the timeout, while etcd is down.
        let err = loop {
            let t = Instant::now();
            match w.next(Duration::from_secs(2)) {
                Ok(evs) => {
                    assert!(t.elapsed() < Duration::from_secs(4));
                    got.extend(evs);
                }
                Err(e) => {
                    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
                    break e;
                }
            }
            assert!(got.len() <= 3, "{got:?}");
        };
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Other(_)), "{msg}");
        assert!(msg.contains("is unreachable"), "{msg}");
        // Still down: still an error, not a hang.
        assert!(w.next(Duration::from_secs(1)).is_err());
        etcd.resume();
        // Writes after the restart, some before the watch is re-made.
        for i in 3..6 {
            assert!(eventually(Duration::from_secs(10), || put(
                &s,
                &format!("n/{i}"),
                b"x"
            )
            .is_ok()));
        }
        let ok = eventually(Duration::from_secs(20), || {
            match w.next(Duration::from_millis(500)) {
                Ok(evs) => got.extend(evs),
                Err(e) => eprintln!("while etcd comes back: {e}"),
            }
            got.len() >= 6
        });
        assert!(ok, "{got:?}");
        put(&s, "n/6", b"x").unwrap();
        assert!(eventually(Duration::from_secs(10), || {
            got.extend(w.next(Duration::from_millis(500)).unwrap_or_default());
            got.len() >= 7
        }));
        let keys: Vec<&str> = got.iter().map(Event::key).collect();
        assert_eq!(keys, ["n/0", "n/1", "n/2", "n/3", "n/4", "n/5", "n/6"]);
        let revs: Vec<Revision> = got.iter().map(Event::revision).collect();
        assert!(revs.windows(2).all(|p| p[0] < p[1]), "{revs:?}");
        assert_eq!(w.revision(), *revs.last().unwrap());
    }

    #[test]
    fn a_watch_from_a_compacted_revision_says_so() {
        let etcd = EtcdServer::start("compact");
        let s = store(&etcd, "/dp/");
        let start = s.list("").unwrap().revision;
        put(&s, "n/a", b"1").unwrap();
        let last = put(&s, "n/a", b"2").unwrap();
        s.compact(last).unwrap();
        let mut w = s.watch("n/", start).unwrap();
        match w.next(Duration::from_secs(5)) {
            Err(StoreError::Compacted { compacted }) => assert_eq!(compacted, last),
            other => panic!("expected Compacted: {other:?}"),
        }
        // From the compacted revision on, it works.
        let mut w = s.watch("n/", last).unwrap();
        put(&s, "n/b", b"3").unwrap();
        assert_eq!(w.next(Duration::from_secs(5)).unwrap()[0].key(), "n/b");
    }

    #[test]
    fn a_lease_expires_when_renewing_stops() {
        let etcd = EtcdServer::start("expire");
        let s = store(&etcd, "/dp/");
        let lease = s
            .keep_alive("hosts/a", b"up".to_vec(), Duration::from_secs(2))
            .unwrap();
        assert!(lease.alive());
        // Renewed past several ttls while the handle lives.
        let held = eventually(Duration::from_secs(5), || {
            s.get("hosts/a").unwrap().is_none()
        });
        assert!(!held, "the key expired although it was renewed");
        assert!(lease.alive());
        drop(lease);
        assert!(
            eventually(Duration::from_secs(10), || s
                .get("hosts/a")
                .unwrap()
                .is_none()),
            "the key outlived its lease"
        );
    }

    #[test]
    fn a_lease_is_renewed_across_an_etcd_restart_and_regranted_when_lost() {
        let mut etcd = EtcdServer::start("renew");
        let s = store(&etcd, "/dp/");
        let lease = s
            .keep_alive("hosts/a", b"up".to_vec(), Duration::from_secs(2))
            .unwrap();
        etcd.stop();
        // Unrenewable: not alive once its ttl has run out.
        assert!(eventually(Duration::from_secs(6), || !lease.alive()));
        etcd.resume();
        assert!(eventually(Duration::from_secs(10), || lease.alive()));
        assert_eq!(s.get("hosts/a").unwrap().unwrap().value, b"up");
        // Lost behind its back (etcd revoked every lease): granted anew and
        // the key put again.
        let client = s.conn.client.clone();
        s.conn
            .run("revoking every lease", async move {
                let mut lc = client.lease_client();
                for l in lc.leases().await?.leases() {
                    lc.revoke(l.id()).await?;
                }
                Ok(())
            })
            .unwrap();
        assert!(eventually(Duration::from_secs(10), || s
            .get("hosts/a")
            .unwrap()
            .is_some_and(|e| e.value == b"up")
            && lease.alive()));
        // And kept from then on, for longer than a ttl.
        let gone = eventually(Duration::from_secs(5), || {
            s.get("hosts/a").unwrap().is_none()
        });
        assert!(!gone, "the re-granted lease was not renewed");
        lease.revoke();
        assert_eq!(s.get("hosts/a").unwrap(), None);
    }
}
