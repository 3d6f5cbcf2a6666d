//! The payload after boot: fetched piece by piece from the sources the collector grants (a
//! neighbour first, the collector last), every piece checked against the manifest's SHA-256
//! before it is kept — nothing unverified is ever served or run — and served, while the run is
//! open, to the nodes still fetching. A source that stalls past the deadline or breaks off is
//! reported and the piece asked for again; one that sends wrong bytes is reported as corrupt
//! and the collector never grants it again. A collector that stops answering (refused, timed
//! out, 5xx) is left for the next on the run's list, as the event reporter does; that one
//! must serve the same payload (its manifest is compared), and its tracker takes the node as
//! it is.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use kiln_protocol::payload::{
    DoneRequest, Grant, GrantsRequest, Manifest, Outcome, Pieces, Source,
};
use kiln_protocol::routes;

use crate::reporter::Bases;

/// Where a peer serves piece N.
pub const PIECE_ROUTE: &str = "/payload/pieces/{piece}";

/// A link's rate, shared by every transfer through it: each transfer waits its bytes' time,
/// and an idle link saves at most [`BURST`] of it (a site caps the collector's payload traffic so that the
/// agents' reports on the same link are never starved; the boot-storm check caps each
/// process as a node's link).
pub struct Bucket {
    bytes_per_s: f64,
    state: Mutex<(f64, Instant)>,
}

/// What an idle link may send at once: a link has no store of time (a longer burst made 20
/// capped processes finish a quarter sooner than their links allow).
pub const BURST: Duration = Duration::from_millis(50);

impl Bucket {
    /// A link of `mbps` megabits per second.
    pub fn mbps(mbps: f64) -> Arc<Bucket> {
        Arc::new(Bucket {
            bytes_per_s: mbps * 1e6 / 8.0,
            state: Mutex::new((0.0, Instant::now())),
        })
    }

    /// Waits until `n` bytes may pass.
    pub async fn take(&self, n: usize) {
        let wait = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let (tokens, last) = &mut *state;
            let now = Instant::now();
            *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.bytes_per_s)
                .min(self.bytes_per_s * BURST.as_secs_f64());
            *last = now;
            *tokens -= n as f64;
            (*tokens < 0.0).then(|| Duration::from_secs_f64(-*tokens / self.bytes_per_s))
        };
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
    }
}

/// The payload as it arrives: its bytes and which pieces are verified.
pub struct Store {
    manifest: Manifest,
    bytes: Mutex<Vec<u8>>,
    have: Mutex<Pieces>,
}

impl Store {
    /// An empty store for `manifest` (checked first: a manifest that cannot be is refused
    /// before anything is allocated for it).
    pub fn new(manifest: Manifest) -> anyhow::Result<Store> {
        manifest.check()?;
        let count = manifest.pieces.len();
        Ok(Store {
            bytes: Mutex::new(vec![0; manifest.size as usize]),
            have: Mutex::new(Pieces::none(count)),
            manifest,
        })
    }

    /// The pieces held.
    pub fn have(&self) -> Pieces {
        self.have.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Keeps piece `index` if `bytes` are it.
    fn keep(&self, index: usize, bytes: &[u8]) -> Result<(), kiln_protocol::payload::PieceError> {
        self.manifest.verify(index, bytes)?;
        let offset = self.manifest.piece_offset(index)? as usize;
        self.bytes.lock().unwrap_or_else(|e| e.into_inner())[offset..offset + bytes.len()]
            .copy_from_slice(bytes);
        self.have
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set(index);
        Ok(())
    }

    /// Piece `index`, when held (verified).
    fn piece(&self, index: usize) -> Option<Vec<u8>> {
        if !self
            .have
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .has(index)
        {
            return None;
        }
        let offset = self.manifest.piece_offset(index).ok()? as usize;
        let len = self.manifest.piece_len(index).ok()? as usize;
        Some(self.bytes.lock().unwrap_or_else(|e| e.into_inner())[offset..offset + len].to_vec())
    }

    /// `f` over the whole payload, once every piece is verified (no copy: serving waits).
    pub fn with_complete<T>(&self, f: impl FnOnce(&[u8]) -> T) -> Option<T> {
        if !self.have().complete() {
            return None;
        }
        Some(f(&self.bytes.lock().unwrap_or_else(|e| e.into_inner())))
    }

    /// A copy of the whole payload, once every piece is verified.
    pub fn bytes(&self) -> Option<Vec<u8>> {
        let complete = self
            .have
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .complete();
        complete.then(|| self.bytes.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// The piece server: what this node holds, to its peers (read-only; nothing else), through
/// `up` when its link is capped.
pub fn router(store: Arc<Store>, up: Option<Arc<Bucket>>) -> axum::Router {
    async fn piece(
        State((store, up)): State<(Arc<Store>, Option<Arc<Bucket>>)>,
        Path(index): Path<usize>,
    ) -> axum::response::Response {
        match store.piece(index) {
            Some(bytes) => {
                if let Some(up) = &up {
                    up.take(bytes.len()).await;
                }
                ([("content-type", "application/octet-stream")], bytes).into_response()
            }
            None => (
                axum::http::StatusCode::NOT_FOUND,
                format!("piece {index} is not held here"),
            )
                .into_response(),
        }
    }
    axum::Router::new()
        .route(PIECE_ROUTE, axum::routing::get(piece))
        .with_state((store, up))
}

/// Where this node's payload came from: bytes by source, and how long it took.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fetched {
    /// Bytes from the collector.
    pub from_collector: u64,
    /// Bytes from each peer, by node.
    pub from_peers: BTreeMap<i64, u64>,
    /// Peers that sent a piece failing its hash.
    pub corrupt: Vec<i64>,
    /// Fetches that broke off or stalled, retried elsewhere.
    pub broken: u64,
    /// Seconds from the first grant to the last piece.
    pub secs: f64,
}

/// The run's way to the collector, for the payload calls.
pub struct Run<'a> {
    /// HTTP client.
    pub http: &'a reqwest::Client,
    /// The collectors, and the one in use.
    pub bases: &'a Bases,
    /// The run.
    pub run_id: i64,
    /// Its session token.
    pub token: &'a str,
    /// The port this node serves pieces on (none: it does not serve).
    pub port: Option<u16>,
    /// The longest one piece may take from any source.
    pub deadline: Duration,
    /// This node's downlink, when capped.
    pub down: Option<Arc<Bucket>>,
}

/// Fetches every piece of `store`'s payload through `run`'s grants; gives up after `patience`
/// without progress.
pub async fn fetch(run: &Run<'_>, store: &Store, patience: Duration) -> anyhow::Result<Fetched> {
    let started = Instant::now();
    let mut report = Fetched::default();
    let mut last_progress = Instant::now();
    // The collector whose manifest the store holds.
    let mut vouched = run.bases.current().0;
    while !store.have().complete() {
        anyhow::ensure!(
            last_progress.elapsed() < patience,
            "no piece of the payload arrived for {}s",
            patience.as_secs()
        );
        let request = GrantsRequest {
            have: store.have(),
            port: run.port,
        };
        let (place, said) = to_collector(run.bases, run.token, run.deadline, |base| {
            run.http
                .post(routes::url(base, routes::PAYLOAD_GRANTS, run.run_id))
                .json(&request)
        })
        .await?;
        if place != vouched {
            same_payload(run, store, place).await?;
            vouched = place;
        }
        let grants: Vec<Grant> = said.error_for_status()?.json().await?;
        if grants.is_empty() {
            // Every source that could help is busy: ask again shortly.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let fetches = grants.into_iter().map(|grant| async move {
            let outcome = match one(run, &grant).await {
                Ok(bytes) => match store.keep(grant.piece, &bytes) {
                    Ok(()) => (Outcome::Verified, bytes.len() as u64),
                    Err(_) => (Outcome::Corrupt, 0),
                },
                Err(_) => (Outcome::Broken, 0),
            };
            (grant, outcome)
        });
        for (grant, (outcome, bytes)) in futures_util::future::join_all(fetches).await {
            match (&grant.from, outcome) {
                (Source::Collector, Outcome::Verified) => report.from_collector += bytes,
                (Source::Peer { node, .. }, Outcome::Verified) => {
                    *report.from_peers.entry(*node).or_default() += bytes
                }
                (Source::Peer { node, .. }, Outcome::Corrupt) => report.corrupt.push(*node),
                _ => report.broken += 1,
            }
            if outcome == Outcome::Verified {
                last_progress = Instant::now();
            }
            // The tracker may have forgotten the grant (a new payload, a restart): the piece,
            // when verified, is kept all the same, and the next grants start afresh.
            let done = DoneRequest { grant, outcome };
            let (_, said) = to_collector(run.bases, run.token, run.deadline, |base| {
                run.http
                    .post(routes::url(base, routes::PAYLOAD_DONE, run.run_id))
                    .json(&done)
            })
            .await?;
            if !said.status().is_success() {
                tracing::warn!(
                    status = said.status().as_u16(),
                    "the collector did not take a fetch's end"
                );
            }
        }
    }
    report.secs = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Sends what `build` makes (with the run's token) to the collector in use, with its place
/// on the list. A refused connection, a timeout or a 5xx moves the run on to the next
/// collector, where the call is made again, once around the list; any other answer is the
/// caller's to read. A collector that answers nothing within `deadline` counts as timed out.
async fn to_collector(
    bases: &Bases,
    token: &str,
    deadline: Duration,
    build: impl Fn(&str) -> reqwest::RequestBuilder,
) -> anyhow::Result<(usize, reqwest::Response)> {
    let mut last = None;
    for _ in 0..bases.len() {
        let (place, base) = bases.current();
        let why = match build(base)
            .bearer_auth(token)
            .timeout(deadline)
            .send()
            .await
        {
            Ok(said) if !said.status().is_server_error() => return Ok((place, said)),
            Ok(said) => format!("{base} answered {}", said.status()),
            Err(err) => format!("{base}: {err}"),
        };
        tracing::warn!(
            collector = base,
            "{why}: the payload goes on with the next collector"
        );
        bases.failed(place);
        last = Some(why);
    }
    Err(anyhow::anyhow!(
        "no collector answered the payload call: {}",
        last.unwrap_or_default()
    ))
}

/// The collector at `place` serves the payload `store` is being filled with: a site whose
/// collectors serve different payloads is refused, rather than every piece failing its hash.
async fn same_payload(run: &Run<'_>, store: &Store, place: usize) -> anyhow::Result<()> {
    let base = run.bases.at(place);
    let theirs: Manifest = run
        .http
        .get(routes::url(base, routes::PAYLOAD, run.run_id))
        .bearer_auth(run.token)
        .send()
        .await?
        .error_for_status()
        .map_err(|e| anyhow::anyhow!("the payload's manifest at {base}: {e}"))?
        .json()
        .await?;
    anyhow::ensure!(
        theirs.sha256 == store.manifest.sha256,
        "collector {base} serves another payload (sha256 {}) than the one this node is fetching (sha256 {}): the site's collectors must serve one payload",
        theirs.sha256,
        store.manifest.sha256
    );
    Ok(())
}

/// One piece from its source, within the deadline.
async fn one(run: &Run<'_>, grant: &Grant) -> anyhow::Result<bytes::Bytes> {
    let request = match &grant.from {
        Source::Collector => run
            .http
            .get(
                routes::url(run.bases.current().1, routes::PAYLOAD_PIECE, run.run_id)
                    .replace("{piece}", &grant.piece.to_string()),
            )
            .bearer_auth(run.token),
        Source::Peer { addr, .. } => run.http.get(format!(
            "http://{addr}{}",
            PIECE_ROUTE.replace("{piece}", &grant.piece.to_string())
        )),
    };
    let fetch = async {
        let bytes = request.send().await?.error_for_status()?.bytes().await?;
        if let Some(down) = &run.down {
            down.take(bytes.len()).await;
        }
        anyhow::Ok(bytes)
    };
    tokio::time::timeout(run.deadline, fetch)
        .await
        .map_err(|_| anyhow::anyhow!("piece {} stalled past {:?}", grant.piece, run.deadline))?
}

/// What `kiln-agent fetch-payload` is asked to do.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// The collectors' boot listeners: one base URL, or several separated by commas.
    pub collector: String,
    /// The run.
    pub run_id: i64,
    /// Its session token.
    pub token: String,
    /// This node's link each way, when capped.
    pub mbps: Option<f64>,
    /// The longest one piece may take.
    pub deadline: Duration,
    /// How long to go on serving after the last piece.
    pub linger: Duration,
}

/// Fetches the run's payload while serving what it holds on a port of its own, then serves on
/// for `linger`: where the bytes came from, as one JSON line.
pub fn fetch_and_serve(settings: &FetchSettings) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        let bases = Bases::new(&settings.collector)?;
        let (_, said) = to_collector(&bases, &settings.token, settings.deadline, |base| {
            http.get(routes::url(base, routes::PAYLOAD, settings.run_id))
        })
        .await?;
        let manifest: Manifest = said.error_for_status()?.json().await?;
        let store = Arc::new(Store::new(manifest)?);
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await?;
        let port = listener.local_addr()?.port();
        let link = settings.mbps.map(Bucket::mbps);
        let up = settings.mbps.map(Bucket::mbps);
        let server = tokio::spawn(axum::serve(listener, router(store.clone(), up)).into_future());
        let run = Run {
            http: &http,
            bases: &bases,
            run_id: settings.run_id,
            token: &settings.token,
            port: Some(port),
            deadline: settings.deadline,
            down: link,
        };
        let fetched = fetch(&run, &store, Duration::from_secs(300)).await?;
        let line = serde_json::json!({
            "run": settings.run_id,
            "secs": fetched.secs,
            "from_collector": fetched.from_collector,
            "from_peers": fetched.from_peers.values().sum::<u64>(),
            "peers": fetched.from_peers.len(),
            "corrupt": fetched.corrupt,
            "broken": fetched.broken,
        })
        .to_string();
        println!("{line}");
        tokio::time::sleep(settings.linger).await;
        server.abort();
        anyhow::Ok(line)
    })
}

/// A booted node's payload: unpacked into its root, and served to the nodes still fetching
/// until this is dropped (when the run ends).
pub struct Serving {
    runtime: Option<tokio::runtime::Runtime>,
    /// Where the bytes came from.
    pub fetched: Fetched,
    /// The payload's size.
    pub bytes: u64,
    /// Files unpacked.
    pub files: usize,
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Serving {
    /// One line for the run's log.
    pub fn summary(&self) -> String {
        let peers: u64 = self.fetched.from_peers.values().sum();
        let mut line = format!(
            "payload: {:.1} MiB ({} files) in {:.1} s, {:.1} MiB from {} peer(s), {:.1} MiB from the collector",
            self.bytes as f64 / 1048576.0,
            self.files,
            self.fetched.secs,
            peers as f64 / 1048576.0,
            self.fetched.from_peers.len(),
            self.fetched.from_collector as f64 / 1048576.0,
        );
        if !self.fetched.corrupt.is_empty() {
            line.push_str(&format!(
                "; pieces failing their hash from node(s) {:?}, fetched again elsewhere",
                self.fetched.corrupt
            ));
        }
        if self.fetched.broken > 0 {
            line.push_str(&format!(
                "; {} fetch(es) broke off or stalled, retried",
                self.fetched.broken
            ));
        }
        line
    }
}

/// How long one piece may take from any source in a booted node: a 4 MiB piece at the
/// slowest link a node still boots on, with room to spare.
pub const BOOT_DEADLINE: Duration = Duration::from_secs(60);

/// How long a booted node waits for any piece before it gives up on the payload.
pub const BOOT_PATIENCE: Duration = Duration::from_secs(600);

/// The run's payload, when the collector serves one: fetched through the grants while this
/// node serves what it holds, every piece verified, then unpacked into `root`. `None` when
/// the collector has no payload (the stage is the whole image).
pub fn boot(
    bases: &Bases,
    run_id: i64,
    token: &str,
    root: &std::path::Path,
) -> anyhow::Result<Option<Serving>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("payload")
        .enable_all()
        .build()?;
    let fetched = runtime.block_on(async {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        let (_, said) = to_collector(bases, token, BOOT_DEADLINE, |base| {
            http.get(routes::url(base, routes::PAYLOAD, run_id))
        })
        .await?;
        if said.status() == reqwest::StatusCode::NOT_FOUND {
            return anyhow::Ok(None);
        }
        let manifest: Manifest = said.error_for_status()?.json().await?;
        let store = Arc::new(Store::new(manifest)?);
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await?;
        let port = listener.local_addr()?.port();
        tokio::spawn(axum::serve(listener, router(store.clone(), None)).into_future());
        let run = Run {
            http: &http,
            bases,
            run_id,
            token,
            port: Some(port),
            deadline: BOOT_DEADLINE,
            down: None,
        };
        let fetched = fetch(&run, &store, BOOT_PATIENCE).await?;
        anyhow::Ok(Some((store, fetched)))
    })?;
    let Some((store, fetched)) = fetched else {
        return Ok(None);
    };
    let (bytes, files) = store
        .with_complete(|bytes| unpack(bytes, root).map(|files| (bytes.len() as u64, files)))
        .ok_or_else(|| anyhow::anyhow!("the payload is not complete"))??;
    Ok(Some(Serving {
        runtime: Some(runtime),
        fetched,
        bytes,
        files,
    }))
}

/// Unpacks a verified payload archive into `root`; returns the files written. It never writes
/// through a symbolic link nor replaces what the stage holds.
pub fn unpack(archive: &[u8], root: &std::path::Path) -> anyhow::Result<usize> {
    use kiln_protocol::newc::{Item, read};
    use std::os::unix::fs::PermissionsExt;
    let items = read(archive)?;
    let mut files = 0;
    for item in items {
        let path = match &item {
            Item::Dir { path, .. } | Item::File { path, .. } | Item::Symlink { path, .. } => *path,
        };
        let target = root.join(path);
        // Every directory on the way must be a real one: a link there would carry the write
        // outside the root.
        let mut at = root.to_path_buf();
        for part in std::path::Path::new(path)
            .parent()
            .into_iter()
            .flat_map(|p| p.components())
        {
            at.push(part);
            let meta = std::fs::symlink_metadata(&at)
                .map_err(|e| anyhow::anyhow!("payload: {}: {e}", at.display()))?;
            anyhow::ensure!(
                meta.is_dir() && !meta.file_type().is_symlink(),
                "payload: {path} lies under {}, which is not a directory",
                at.display()
            );
        }
        let existing = std::fs::symlink_metadata(&target).ok();
        match item {
            Item::Dir { mode, .. } => match existing {
                Some(m) if m.is_dir() => {}
                Some(_) => {
                    anyhow::bail!("payload: directory {path} would replace a file the stage holds")
                }
                None => {
                    std::fs::create_dir(&target)
                        .map_err(|e| anyhow::anyhow!("payload: {}: {e}", target.display()))?;
                    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
                }
            },
            Item::File { mode, data, .. } => {
                anyhow::ensure!(
                    existing.is_none(),
                    "payload: {path} would replace a file the stage holds"
                );
                std::fs::write(&target, data)
                    .map_err(|e| anyhow::anyhow!("payload: {}: {e}", target.display()))?;
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
                files += 1;
            }
            Item::Symlink { target: to, .. } => {
                anyhow::ensure!(
                    existing.is_none(),
                    "payload: {path} would replace a file the stage holds"
                );
                std::os::unix::fs::symlink(to, &target)
                    .map_err(|e| anyhow::anyhow!("payload: {}: {e}", target.display()))?;
            }
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::newc::{push, trailer};

    fn archive(entries: &[(u32, &str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (mode, name, data) in entries {
            push(&mut out, 1, *mode, 1, (0, 0), name, data);
        }
        trailer(&mut out);
        out
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-unpack-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_payload_unpacks_into_the_root_with_its_modes() {
        use std::os::unix::fs::PermissionsExt;
        let root = scratch("ok");
        std::fs::create_dir(root.join("usr")).unwrap();
        let bytes = archive(&[
            (0o040755, "usr", b""),
            (0o040755, "usr/bin", b""),
            (0o100755, "usr/bin/fio", b"ELF"),
            (0o120777, "usr/bin/fio2", b"fio"),
        ]);
        assert_eq!(unpack(&bytes, &root).unwrap(), 1);
        assert_eq!(std::fs::read(root.join("usr/bin/fio")).unwrap(), b"ELF");
        let mode = std::fs::metadata(root.join("usr/bin/fio"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            std::fs::read_link(root.join("usr/bin/fio2")).unwrap(),
            std::path::Path::new("fio")
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_payload_never_writes_through_a_link_nor_over_the_stage() {
        let root = scratch("hostile");
        let outside = scratch("outside");
        std::fs::create_dir(root.join("bin")).unwrap();
        std::fs::write(root.join("bin/kiln-agent"), b"the stage's agent").unwrap();
        let link = format!("{}", outside.display());
        for (bytes, says) in [
            (
                archive(&[
                    (0o120777, "etc", link.as_bytes()),
                    (0o100644, "etc/passwd", b"x"),
                ]),
                "not a directory",
            ),
            (
                archive(&[(0o100755, "bin/kiln-agent", b"evil")]),
                "would replace",
            ),
            (
                archive(&[(0o120777, "bin/kiln-agent", b"/tmp/x")]),
                "would replace",
            ),
            (
                archive(&[(0o040755, "bin/kiln-agent", b"")]),
                "would replace",
            ),
            (archive(&[(0o100644, "../escape", b"x")]), "climbs out"),
        ] {
            let err = format!("{:#}", unpack(&bytes, &root).unwrap_err());
            assert!(err.contains(says), "{says}: {err}");
        }
        assert_eq!(
            std::fs::read(root.join("bin/kiln-agent")).unwrap(),
            b"the stage's agent"
        );
        assert!(
            std::fs::read_dir(&outside).unwrap().next().is_none(),
            "a file landed outside the root"
        );
        std::fs::remove_dir_all(root).unwrap();
        std::fs::remove_dir_all(outside).unwrap();
    }
}
