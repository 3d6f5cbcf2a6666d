//! A throwaway PostgreSQL cluster for the lab and the tests: Debian's server binaries
//! (`initdb`, `postgres`), a data directory of the caller's, a Unix socket in a private
//! directory and no TCP listener. The postmaster is this process's child, started and
//! stopped by its PID — never a host service, never a shared server. As root, the cluster
//! runs as Debian's `postgres` user (`initdb` refuses root), through `setpriv`, which execs
//! the server so that its PID is still the child's.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Where Debian keeps each major version's server binaries.
const DEBIAN_BIN: &str = "/usr/lib/postgresql";

/// The port that names the socket file (`.s.PGSQL.5432`); nothing listens on TCP.
const PORT: u16 = 5432;

/// Longest a start or a stop may take.
const PATIENCE: Duration = Duration::from_secs(60);

/// The superuser and database the cluster is made with.
pub const USER: &str = "kiln";

/// How much of the machine a cluster takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sizing {
    /// A test's: many run at once, each small (`shared_buffers` 64 MB).
    Test,
    /// The lab's and the benches': one cluster, set up as `docs/collector.md` tells a site to
    /// run kiln's database, scaled to this machine's memory ([`Sizing::settings`]).
    Site,
}

impl Sizing {
    /// The server's settings beyond its defaults, for a machine of `mem_bytes` of memory.
    /// A site's cluster keeps the working set of a burn-in in its own buffers — the events'
    /// index and the runs every batch updates: with too few, each backend writes out the
    /// pages it evicts, waiting for the WAL to be flushed first — and lets its checkpoints
    /// come from the clock, not from the WAL's size.
    pub fn settings(self, mem_bytes: u64) -> Vec<(&'static str, String)> {
        const MIB: u64 = 1 << 20;
        match self {
            Sizing::Test => vec![("shared_buffers", "64MB".into())],
            Sizing::Site => vec![
                (
                    "shared_buffers",
                    format!("{}MB", (mem_bytes / 8 / MIB).clamp(128, 8192)),
                ),
                ("wal_buffers", "64MB".into()),
                ("max_wal_size", "4GB".into()),
            ],
        }
    }
}

/// This machine's memory (`MemTotal`), or 1 GiB where it cannot be read.
fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| mem_total(&m))
        .unwrap_or(1 << 30)
}

/// `MemTotal` of a `/proc/meminfo`, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let kib = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let kib = kib.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    kib.checked_mul(1024)
}

/// A running cluster; stopped (fast shutdown, then immediate) when dropped.
pub struct Cluster {
    bin: PathBuf,
    sizing: Sizing,
    /// Off only for the test that a collector refuses such a server.
    fsync: bool,
    data: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    owner: Option<(u32, u32)>,
    child: Option<Child>,
}

/// The directory of the newest installed major version's server binaries.
pub fn server_bin() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(DEBIAN_BIN)
        .map_err(|e| {
            anyhow::anyhow!(
                "PostgreSQL's server is not installed ({DEBIAN_BIN}: {e}): `.ci/setup` installs Debian's postgresql"
            )
        })?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        anyhow::anyhow!("no PostgreSQL server under {DEBIAN_BIN}/*/bin: `.ci/setup` installs Debian's postgresql")
    })
}

/// The `postgres` user's uid and gid, from the password database.
fn postgres_user() -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "running as root, and there is no `postgres` user to run the cluster as (initdb refuses root): Debian's postgresql-common creates it"
            )
        })
}

impl Cluster {
    /// A test's cluster ([`Sizing::Test`]) in `dir`: [`Cluster::start_sized`].
    pub fn start(dir: &Path) -> anyhow::Result<Cluster> {
        Cluster::start_sized(dir, Sizing::Test)
    }

    /// Makes a cluster in `dir/pgdata` (unless one is there) and starts it, sized by
    /// `sizing`; returns once it accepts connections, with the database [`USER`] created.
    pub fn start_sized(dir: &Path, sizing: Sizing) -> anyhow::Result<Cluster> {
        Cluster::start_flushing(dir, sizing, true)
    }

    /// A test's cluster that does not flush its commits (`fsync=off`): one kiln must refuse.
    #[cfg(test)]
    pub(crate) fn start_without_fsync(dir: &Path) -> anyhow::Result<Cluster> {
        Cluster::start_flushing(dir, Sizing::Test, false)
    }

    fn start_flushing(dir: &Path, sizing: Sizing, fsync: bool) -> anyhow::Result<Cluster> {
        static N: AtomicU32 = AtomicU32::new(0);
        let bin = server_bin()?;
        std::fs::create_dir_all(dir)?;
        // A short path of its own: a socket's path may not pass 107 bytes.
        let socket = std::env::temp_dir().join(format!(
            "kiln-pg-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&socket);
        std::fs::create_dir_all(&socket)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let owner = root.then(postgres_user).transpose()?;
        let data = dir.join("pgdata");
        if let Some((uid, gid)) = owner {
            for d in [dir, socket.as_path()] {
                std::os::unix::fs::chown(d, Some(uid), Some(gid))?;
            }
        }
        let mut cluster = Cluster {
            bin,
            sizing,
            fsync,
            log: dir.join("postgres.log"),
            data,
            socket,
            owner,
            child: None,
        };
        if !cluster.data.join("PG_VERSION").exists() {
            cluster.initdb()?;
        }
        cluster.spawn()?;
        cluster.ensure_database()?;
        Ok(cluster)
    }

    /// A command running `program` of the server's binaries as the cluster's owner.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match self.owner {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg("--")
                    .arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    fn initdb(&self) -> anyhow::Result<()> {
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(&self.data)
            .args(["-A", "trust", "-U", USER, "-E", "UTF8", "--no-sync"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| anyhow::anyhow!("cannot run initdb: {e}"))?;
        anyhow::ensure!(
            out.status.success(),
            "initdb -D {} failed: {}",
            self.data.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    /// Starts the postmaster (every commit flushed: `fsync` and `synchronous_commit` on) and
    /// waits until it answers.
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(&self.data)
            .arg("-k")
            .arg(&self.socket)
            .args(["-p", &PORT.to_string(), "-c", "listen_addresses="])
            .args([
                "-c",
                &format!("fsync={}", if self.fsync { "on" } else { "off" }),
            ])
            .args(["-c", "synchronous_commit=on"])
            .args(["-c", "max_connections=200"])
            .args(
                self.settings()
                    .into_iter()
                    .flat_map(|s| ["-c".to_owned(), s]),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start postgres: {e}"))?;
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                anyhow::bail!(
                    "postgres exited ({status}) before it accepted connections; its log {} says: {}",
                    self.log.display(),
                    self.log_tail()
                );
            }
            if postgres::Client::connect(&self.url("postgres"), postgres::NoTls).is_ok() {
                return Ok(());
            }
            anyhow::ensure!(
                started.elapsed() < PATIENCE,
                "postgres did not accept connections within {}s; its log says: {}",
                PATIENCE.as_secs(),
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ensure_database(&self) -> anyhow::Result<()> {
        let mut c = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)?;
        let exists = c
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&USER])?
            .is_some();
        if !exists {
            c.batch_execute(&format!("CREATE DATABASE {USER}"))?;
        }
        Ok(())
    }

    /// The settings the server runs with beyond its defaults (fsync and synchronous commit
    /// are always on), as `name=value`.
    pub fn settings(&self) -> Vec<String> {
        self.sizing
            .settings(memory_bytes())
            .into_iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect()
    }

    /// The connection URL of database `db`, over the cluster's socket.
    pub fn url(&self, db: &str) -> String {
        let host: String = self
            .socket
            .to_string_lossy()
            .bytes()
            .map(|b| match b {
                b'/' => "%2F".to_owned(),
                b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => (b as char).to_string(),
                b => format!("%{b:02X}"),
            })
            .collect();
        format!("postgresql://{USER}@{host}:{PORT}/{db}")
    }

    /// The postmaster's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the postmaster as a crash would (`pg_ctl restart -m immediate`: SIGQUIT, no
    /// checkpoint) and starts it again: what was committed must survive.
    pub fn restart_immediate(&mut self) -> anyhow::Result<()> {
        self.signal_and_wait(libc::SIGQUIT, PATIENCE)?;
        self.spawn()
    }

    /// Sends `signal` to the postmaster and waits up to `patience` for it to exit.
    fn signal_and_wait(&mut self, signal: i32, patience: Duration) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        let pid = child.id() as i32;
        // SAFETY: kill takes plain integers; the PID is our own child's, not yet reaped (so
        // not reused).
        unsafe { libc::kill(pid, signal) };
        let started = Instant::now();
        while started.elapsed() < patience {
            if child.try_wait()?.is_some() {
                self.child = None;
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!(
            "postgres (PID {pid}) did not exit within {}s of signal {signal}",
            patience.as_secs()
        )
    }

    /// Shuts the server down (fast) and keeps its socket directory, so that [`Cluster::resume`]
    /// brings it back at the same URL: a database that goes away for a while.
    pub fn halt(&mut self) -> anyhow::Result<()> {
        self.signal_and_wait(libc::SIGINT, Duration::from_secs(20))
    }

    /// Starts a halted server again.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        self.spawn()
    }

    /// Stops the cluster: a fast shutdown, else an immediate one, else SIGKILL.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let result = self
            .signal_and_wait(libc::SIGINT, Duration::from_secs(20))
            .or_else(|_| self.signal_and_wait(libc::SIGQUIT, Duration::from_secs(10)))
            .or_else(|_| self.signal_and_wait(libc::SIGKILL, Duration::from_secs(10)));
        let _ = std::fs::remove_dir_all(&self.socket);
        result
    }

    /// The last lines of the server's log, for errors.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

/// Stops the postmaster of the cluster in `dir` a lab killed outright left running (its
/// `postmaster.pid`, checked to be a postgres on that data directory): an immediate shutdown.
/// Returns how many it stopped.
pub fn down(dir: &Path) -> usize {
    let data = dir.join("pgdata");
    let Some(pid) = std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok())
    else {
        return 0;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let ours = cmdline
        .split(|b| *b == 0)
        .any(|arg| arg == data.as_os_str().as_encoded_bytes());
    if !ours || !String::from_utf8_lossy(&cmdline).contains("postgres") {
        return 0;
    }
    // SAFETY: kill has no memory preconditions; the PID is the one the cluster recorded and
    // was just seen to be its postmaster.
    unsafe { libc::kill(pid, libc::SIGQUIT) };
    1
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            eprintln!("kiln: {err:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A site's cluster takes an eighth of the machine's memory for its buffers, within
    /// bounds; a test's stays small; a `/proc/meminfo` that makes no sense is not believed.
    #[test]
    fn a_site_cluster_is_sized_by_the_memory_and_odd_meminfo_is_not_believed() {
        let buffers = |mem: u64| {
            Sizing::Site
                .settings(mem)
                .into_iter()
                .find(|(name, _)| *name == "shared_buffers")
                .unwrap()
                .1
        };
        assert_eq!(buffers(24 << 30), "3072MB");
        assert_eq!(buffers(512 << 20), "128MB");
        assert_eq!(buffers(0), "128MB");
        assert_eq!(buffers(1 << 40), "8192MB");
        assert_eq!(
            Sizing::Test.settings(1 << 40),
            vec![("shared_buffers", "64MB".to_owned())]
        );
        assert_eq!(
            mem_total("MemFree: 1 kB\nMemTotal:       24576000 kB\n"),
            Some(24_576_000 * 1024)
        );
        for hostile in [
            "",
            "MemTotal: kB",
            "MemTotal: -5 kB",
            "MemTotal: 12 MB",
            "MemTotal: 99999999999999999999 kB",
            "MemTotal: 18446744073709551615 kB",
        ] {
            assert_eq!(mem_total(hostile), None, "{hostile:?}");
        }
    }
}
