//! `kiln.yaml`: where the collector listens and keeps its data, its tokens, and its policies.
//! Every key is optional; unknown keys are refused with their position.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use kiln_protocol::api::Mode;
use kiln_protocol::units::HumanDuration;
use serde::Deserialize;

/// The collector's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the boot network reaches: iPXE, artifacts, the agents' calls.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The management listener: operators, pages and reports, over TLS.
    #[serde(default)]
    pub management: Management,
    /// Data directory (SQLite file, suites, artifacts, templates).
    #[serde(default)]
    pub data: Option<PathBuf>,
    /// Token operators' mutating calls need (also `KILN_ADMIN_TOKEN`); generated into
    /// `DATA/admin.token` when neither is set.
    #[serde(default)]
    pub admin_token: Option<String>,
    /// Token report readers need; reports are open when unset.
    #[serde(default)]
    pub read_token: Option<String>,
    /// A run whose agent is silent longer than this fails as "lost contact".
    #[serde(default = "default_heartbeat")]
    pub heartbeat_timeout: HumanDuration,
    /// Who may register ad-hoc runs (`kiln-agent run --collector`): `open` or `admin`.
    #[serde(default)]
    pub registration: Registration,
    /// Suite name (a file in `DATA/suites/`) for nodes with none assigned.
    #[serde(default = "default_suite")]
    pub default_suite: String,
    /// Mode given to a node seen for the first time.
    #[serde(default = "default_mode")]
    pub unknown_nodes: Mode,
    /// URL nodes reach the collector at, for boot scripts (default: from the Host header).
    #[serde(default)]
    pub public_url: Option<String>,
    /// What a node does once verified.
    #[serde(default = "default_after")]
    pub after_verify: AfterVerify,
    /// Serial consoles and power drivers, per node (by MAC) or per rack.
    #[serde(default)]
    pub nodes: Vec<NodeAccess>,
    /// How long a client has to send a request's headers, and on a kept-alive connection to
    /// start its next request, before the connection is closed.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: HumanDuration,
    /// How long one request may take, body included (the bandwidth routes excepted).
    #[serde(default = "default_request_timeout")]
    pub request_timeout: HumanDuration,
    /// Most connections open at once; new ones past it are closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Requests per second (and burst) one source address may make to the routes that need
    /// no token: `/ipxe`, `/boot.ipxe`, registration, artifacts, `/login`.
    #[serde(default)]
    pub unauthenticated_rate: Rate,
    /// Most nodes the collector creates for machines it does not know (no rack label) before
    /// it refuses more, with a log line saying so.
    #[serde(default = "default_max_unknown_nodes")]
    pub max_unknown_nodes: u64,
    /// Most nodes unauthenticated registrations create (`kiln-agent run --collector` without
    /// the admin token), counted apart from machines booting, which they can never crowd out.
    #[serde(default = "default_max_ad_hoc_nodes")]
    pub max_ad_hoc_nodes: u64,
    /// What one run of a known node may send before it is cut off and marked.
    #[serde(default = "RunBounds::known")]
    pub run_bounds: RunBounds,
    /// The same for a run registered without the admin token: far lower, since anyone on the
    /// boot network may start one.
    #[serde(default = "RunBounds::ad_hoc")]
    pub ad_hoc_bounds: RunBounds,
    /// Whether a run no console vouches for may ship: `required` (it may not) or `optional`
    /// (it may, and still says `unattested` everywhere). Recorded on each run as it starts.
    #[serde(default)]
    pub attestation: kiln_protocol::attest::Attestation,
    /// Most runs one node may start in 24 hours (a node rebooted into verification in a loop,
    /// or an operator's registrations, cannot fill the database).
    #[serde(default = "default_runs_per_node_per_day")]
    pub runs_per_node_per_day: u64,
    /// The most the collector sends of the payload, in Mb/s over all nodes (unset: no cap):
    /// peers carry the rest, and the agents' reports on the same link are never starved.
    #[serde(default)]
    pub payload_mbps: Option<f64>,
    /// Where runs are kept: `sqlite` (`DATA/kiln.sqlite`, one collector) or a PostgreSQL URL
    /// (`postgresql://user@host/db`) that several collectors share.
    #[serde(default)]
    pub database: Database,
}

/// Where the collector keeps its runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Database {
    /// `DATA/kiln.sqlite`, this collector's alone.
    #[default]
    Sqlite,
    /// A PostgreSQL database (its URL), which other collectors may share.
    Postgres(String),
}

impl std::str::FromStr for Database {
    type Err = String;

    fn from_str(text: &str) -> Result<Database, String> {
        if text == "sqlite" {
            return Ok(Database::Sqlite);
        }
        if text.starts_with("postgresql://") || text.starts_with("postgres://") {
            // Checked now, so a typo is refused with the file's position, not at start-up.
            return text
                .parse::<postgres::Config>()
                .map(|_| Database::Postgres(text.to_owned()))
                .map_err(|e| format!("database: {e}"));
        }
        Err(format!(
            "database: expected `sqlite` or a PostgreSQL URL (postgresql://user@host/db), got {text:?}"
        ))
    }
}

/// Where the value of the top-level key an error names (`KEY: …`) starts, 1-based.
fn top_level_key_position(text: &str, message: &str) -> Option<(usize, usize)> {
    let (key, _) = message.split_once(": ")?;
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    text.lines().enumerate().find_map(|(i, line)| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let value = rest.len() - rest.trim_start().len();
        Some((i + 1, key.len() + 2 + value))
    })
}

impl<'de> Deserialize<'de> for Database {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Database, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What one run may send: events and log bytes. Past either, the batch is refused (429 or
/// 413) and the run ends as an error saying which bound it passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunBounds {
    /// Events stored for the run.
    pub events: u64,
    /// Bytes of log lines stored for the run.
    pub log_bytes: kiln_protocol::units::Size,
}

impl RunBounds {
    /// A known node's: a 72-hour burn-in logging and reporting progress every second of
    /// every step stays far inside.
    pub fn known() -> RunBounds {
        RunBounds {
            events: 5_000_000,
            log_bytes: kiln_protocol::units::Size(2 << 30),
        }
    }

    /// An ad-hoc run's: a smoke suite's worth, many times over.
    pub fn ad_hoc() -> RunBounds {
        RunBounds {
            events: 20_000,
            log_bytes: kiln_protocol::units::Size(16 << 20),
        }
    }
}

/// The management listener: where operators, pages and reports are served, over TLS.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Management {
    /// Address to listen on.
    #[serde(default = "default_management_listen")]
    pub listen: SocketAddr,
    /// Certificate chain (PEM); a self-signed one is made under `DATA/tls/` when left out.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(default)]
    pub key: Option<PathBuf>,
}

impl Default for Management {
    fn default() -> Self {
        Management {
            listen: default_management_listen(),
            cert: None,
            key: None,
        }
    }
}

fn default_management_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}

/// A token-bucket rate.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed at once after a quiet spell.
    pub burst: f64,
}

impl Default for Rate {
    fn default() -> Self {
        Rate {
            per_second: 20.0,
            burst: 200.0,
        }
    }
}

fn default_max_unknown_nodes() -> u64 {
    10_000
}

fn default_max_ad_hoc_nodes() -> u64 {
    1_000
}

fn default_runs_per_node_per_day() -> u64 {
    50
}

/// How to reach one node's (or one rack's nodes') console and power.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAccess {
    /// The node with this MAC.
    #[serde(default)]
    pub mac: Option<String>,
    /// Every node of this rack.
    #[serde(default)]
    pub rack: Option<String>,
    /// Where its serial console is read (memtest86+ results come from there).
    #[serde(default)]
    pub console: Option<Source>,
    /// How it is reset into the next stage.
    #[serde(default)]
    pub power: Option<crate::memtest::power::Power>,
}

impl Config {
    /// The access entry for a node: its MAC first, then its rack.
    pub fn access_for(&self, macs: &[String], rack: Option<&str>) -> Option<&NodeAccess> {
        self.nodes
            .iter()
            .find(|a| {
                a.mac
                    .as_ref()
                    .is_some_and(|m| macs.iter().any(|x| x.eq_ignore_ascii_case(m)))
            })
            .or_else(|| {
                self.nodes
                    .iter()
                    .find(|a| a.rack.is_some() && a.rack.as_deref() == rack)
            })
    }
}

/// Where a node's serial console can be read. In YAML, a mapping with one of `tcp`,
/// `command` (with an optional `env_file`) or `file`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawSource")]
pub enum Source {
    /// Raw serial over TCP (ser2net, console servers, QEMU `-serial tcp:`).
    Tcp(String),
    /// A command whose output is the console (e.g. `ipmitool … sol activate`); secrets come
    /// from the environment file, never the command line.
    Command {
        /// Program and arguments.
        argv: Vec<String>,
        /// A file of `NAME=value` lines added to its environment.
        #[serde(default)]
        env_file: Option<PathBuf>,
    },
    /// A log file being written by something else; followed from its current end.
    File(PathBuf),
}

/// The YAML form of [`Source`] (serde_yaml reads enums only from tags, which operators do not
/// write).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    tcp: Option<String>,
    command: Option<Vec<String>>,
    env_file: Option<PathBuf>,
    file: Option<PathBuf>,
}

impl TryFrom<RawSource> for Source {
    type Error = String;

    fn try_from(raw: RawSource) -> Result<Self, String> {
        match (raw.tcp, raw.command, raw.file) {
            (Some(addr), None, None) if raw.env_file.is_none() => Ok(Source::Tcp(addr)),
            (None, Some(argv), None) if !argv.is_empty() => Ok(Source::Command { argv, env_file: raw.env_file }),
            (None, None, Some(path)) if raw.env_file.is_none() => Ok(Source::File(path)),
            _ => Err("expected exactly one of `tcp: HOST:PORT`, `command: [argv…]` (with optional `env_file`) or `file: PATH`".into()),
        }
    }
}

kiln_protocol::words!(
    /// What a verified node's next network boot does (`after_verify`), shown on its done
    /// screen.
    AfterVerify, "after_verify", {
        /// Leave iPXE: the firmware boots the next device, the node's own disk.
        Exit => "exit",
        /// Power off.
        Poweroff => "poweroff",
        /// Wait at the boot prompt.
        Hold => "hold",
    }
);

/// Who may register ad-hoc runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    /// Any host that can reach the collector (it gets a token for its own run only).
    #[default]
    Open,
    /// Only with the admin token.
    Admin,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_header_timeout() -> HumanDuration {
    HumanDuration::from_secs(15)
}
fn default_request_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}
fn default_max_connections() -> usize {
    16_384
}
fn default_heartbeat() -> HumanDuration {
    HumanDuration::from_secs(60)
}
fn default_suite() -> String {
    "smoke".into()
}
fn default_mode() -> Mode {
    Mode::Verify
}
fn default_after() -> AfterVerify {
    AfterVerify::Hold
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            management: Management::default(),
            data: None,
            admin_token: None,
            read_token: None,
            heartbeat_timeout: default_heartbeat(),
            registration: Registration::default(),
            default_suite: default_suite(),
            unknown_nodes: default_mode(),
            public_url: None,
            after_verify: default_after(),
            nodes: Vec::new(),
            header_timeout: default_header_timeout(),
            request_timeout: default_request_timeout(),
            max_connections: default_max_connections(),
            unauthenticated_rate: Rate::default(),
            max_unknown_nodes: default_max_unknown_nodes(),
            max_ad_hoc_nodes: default_max_ad_hoc_nodes(),
            run_bounds: RunBounds::known(),
            ad_hoc_bounds: RunBounds::ad_hoc(),
            attestation: kiln_protocol::attest::Attestation::Required,
            runs_per_node_per_day: default_runs_per_node_per_day(),
            payload_mbps: None,
            database: Database::Sqlite,
        }
    }
}

impl Config {
    /// Reads a config file; errors name `FILE:LINE:COLUMN`.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
        let config: Config = serde_yaml::from_str(&text).map_err(|e| {
            let message = e.to_string().replace('`', "\"");
            // serde_yaml places a value its own parser took and the field's type refused at the
            // document's start: the key's line says more.
            let key = top_level_key_position(&text, &message);
            match (key, e.location()) {
                (Some((line, column)), Some(loc)) if loc.line() == 1 && loc.column() == 1 => {
                    anyhow::anyhow!("{}:{line}:{column}: {message}", path.display())
                }
                (_, Some(loc)) => anyhow::anyhow!(
                    "{}:{}:{}: {message}",
                    path.display(),
                    loc.line(),
                    loc.column()
                ),
                (Some((line, column)), None) => {
                    anyhow::anyhow!("{}:{line}:{column}: {message}", path.display())
                }
                (None, None) => anyhow::anyhow!("{}: {message}", path.display()),
            }
        })?;
        if let Some(mbps) = config.payload_mbps {
            if !(mbps.is_finite() && mbps > 0.0) {
                anyhow::bail!(
                    "{}: payload_mbps: {mbps}; expected a rate above 0 (leave it out for no cap)",
                    path.display()
                );
            }
        }
        if let Some(url) = &config.public_url {
            let ok = url.starts_with("http://")
                && url[7..]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".:-[]/".contains(c));
            if !ok {
                anyhow::bail!(
                    "{}: public_url: {url:?}; expected http://HOST[:PORT] (iPXE here speaks plain HTTP)",
                    path.display()
                );
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_access_reads_consoles_and_power_drivers() {
        let nodes: Vec<NodeAccess> = serde_yaml::from_str(
            "- mac: 52:54:00:00:00:01\n  console: {tcp: 127.0.0.1:4001}\n  power: {qmp: /tmp/n1.qmp}\n- rack: R12\n  console: {command: [ipmitool, sol, activate], env_file: /etc/kiln/bmc.env}\n  power: {ipmitool: {host: bmc, user: admin, password_file: /etc/kiln/pw}}\n",
        )
        .unwrap();
        assert_eq!(nodes[0].console, Some(Source::Tcp("127.0.0.1:4001".into())));
        assert!(matches!(
            nodes[1].power,
            Some(crate::memtest::power::Power::Ipmitool { .. })
        ));
        let config = Config {
            nodes,
            ..Config::default()
        };
        assert!(
            config
                .access_for(&["52:54:00:00:00:01".into()], None)
                .is_some()
        );
        assert!(
            config
                .access_for(&["aa:aa:aa:aa:aa:aa".into()], Some("R12"))
                .is_some()
        );
        assert!(
            config
                .access_for(&["aa:aa:aa:aa:aa:aa".into()], Some("R13"))
                .is_none()
        );
        let err = serde_yaml::from_str::<NodeAccess>("console: {tcp: a, file: b}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected exactly one of"), "{err}");
    }

    #[test]
    fn the_database_is_sqlite_or_a_postgres_url_and_nothing_else() {
        let read = |yaml: &str| serde_yaml::from_str::<Config>(yaml).map(|c| c.database);
        assert_eq!(read("listen: 127.0.0.1:9000").unwrap(), Database::Sqlite);
        assert_eq!(read("database: sqlite").unwrap(), Database::Sqlite);
        assert_eq!(
            read("database: postgresql://kiln@db.example/kiln").unwrap(),
            Database::Postgres("postgresql://kiln@db.example/kiln".into())
        );
        for (bad, says) in [
            (
                "database: mysql://x",
                "expected `sqlite` or a PostgreSQL URL",
            ),
            ("database: SQLite", "expected `sqlite` or a PostgreSQL URL"),
            ("database: 5", "expected `sqlite`"),
            ("database: [a]", "invalid type"),
            ("database: postgresql://h:notaport/db", "database:"),
        ] {
            let err = read(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
        // Through the file, the error names where the value is.
        let dir = std::env::temp_dir().join(format!("kiln-config-db-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("kiln.yaml");
        std::fs::write(&file, "listen: 127.0.0.1:9000\ndatabase:  mysql://x\n").unwrap();
        let err = Config::load(&file).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "{}:2:12: database: expected \"sqlite\"",
                file.display()
            )),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_keys_are_refused_with_their_position() {
        let dir = std::env::temp_dir().join(format!("kiln-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("kiln.yaml");
        std::fs::write(&file, "listen: 127.0.0.1:9000\nadmin_tokn: x\n").unwrap();
        let err = Config::load(&file).unwrap_err().to_string();
        assert!(
            err.contains("kiln.yaml:2:1: unknown field \"admin_tokn\""),
            "{err}"
        );
        std::fs::write(&file, "listen: 127.0.0.1:9000\nheartbeat_timeout: 2m\n").unwrap();
        let config = Config::load(&file).unwrap();
        assert_eq!(config.heartbeat_timeout.get().as_secs(), 120);
        // The limits are checked like the rest: a bad value names its place.
        for (text, want) in [
            ("header_timeout: fast\n", "kiln.yaml:1:"),
            (
                "unauthenticated_rate: {per_second: 5}\n",
                "kiln.yaml:1:23: unauthenticated_rate: missing field \"burst\"",
            ),
            ("max_connections: -1\n", "kiln.yaml:1:"),
            (
                "ad_hoc_bounds: {events: -5, log_bytes: 1MiB}\n",
                "kiln.yaml:1:",
            ),
            (
                "run_bounds: {events: 10, log_bytes: lots}\n",
                "invalid size \"lots\"",
            ),
            (
                "run_bounds: {events: 10}\n",
                "run_bounds: missing field \"log_bytes\"",
            ),
            ("max_ad_hoc_nodes: many\n", "kiln.yaml:1:"),
            ("runs_per_node_per_day: -2\n", "kiln.yaml:1:"),
            (
                "attestation: maybe\n",
                "unknown variant \"maybe\", expected \"required\" or \"optional\"",
            ),
            (
                "\nafter_verify: reboot\n",
                "kiln.yaml:2:15: after_verify: unknown variant \"reboot\", expected one of \"exit\", \"poweroff\", \"hold\"",
            ),
            (
                "payload_mbps: 0\n",
                "payload_mbps: 0; expected a rate above 0",
            ),
            (
                "payload_mbps: -5\n",
                "payload_mbps: -5; expected a rate above 0",
            ),
            (
                "unknown_nodes: Verify\n",
                "kiln.yaml:1:16: unknown_nodes: unknown variant \"Verify\", expected one of \"verify\", \"local\", \"hold\"",
            ),
        ] {
            std::fs::write(&file, text).unwrap();
            let err = Config::load(&file).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
        std::fs::write(
            &file,
            "header_timeout: 5s\nunauthenticated_rate: {per_second: 5, burst: 50}\nmax_unknown_nodes: 7\nmax_ad_hoc_nodes: 3\nad_hoc_bounds: {events: 500, log_bytes: 2MiB}\nattestation: optional\nafter_verify: exit\nunknown_nodes: hold\n",
        )
        .unwrap();
        let config = Config::load(&file).unwrap();
        assert_eq!(config.max_ad_hoc_nodes, 3);
        assert_eq!(
            config.ad_hoc_bounds,
            RunBounds {
                events: 500,
                log_bytes: kiln_protocol::units::Size(2 << 20)
            }
        );
        assert_eq!(config.run_bounds, RunBounds::known());
        assert_eq!(
            config.attestation,
            kiln_protocol::attest::Attestation::Optional
        );
        assert_eq!(config.header_timeout.get().as_secs(), 5);
        assert_eq!(config.unauthenticated_rate.burst, 50.0);
        assert_eq!(config.max_unknown_nodes, 7);
        assert_eq!(config.after_verify, AfterVerify::Exit);
        assert_eq!(config.unknown_nodes, Mode::Hold);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
