//! The load bench's collector: `kiln serve` as a child, killed outright (SIGKILL) and started
//! again on the same data in the killed rounds.

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A `kiln serve` child and the certificate it shows.
pub struct Server {
    pub child: Child,
    /// Its certificate's fingerprint, as its banner says (the same after a restart: it is
    /// kept in the data directory).
    pub pin: String,
}

impl Server {
    /// `kiln serve` with its boot listener on `port` and its management listener on `ops`,
    /// keeping its runs in `database` (a PostgreSQL URL) or, without one, SQLite.
    pub fn start(data: &Path, port: u16, ops: u16, database: Option<&str>) -> Server {
        // Every simulated agent comes from 127.0.0.1 and registers ad hoc: lift the per-source
        // limits, the caps on unknown and ad-hoc nodes and an ad-hoc run's bounds, which are
        // for a real boot network.
        let config = data.join("kiln.yaml");
        std::fs::write(
            &config,
            format!(
                "unauthenticated_rate: {{per_second: 1000000, burst: 1000000}}\nmax_unknown_nodes: 10000000\nmax_ad_hoc_nodes: 10000000\nad_hoc_bounds: {{events: 1000000000000, log_bytes: 1000TiB}}\n{}",
                database.map_or(String::new(), |url| format!("database: \"{url}\"\n"))
            ),
        )
        .expect("bench config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args([
                "serve",
                "--config",
                config.to_str().unwrap_or("kiln.yaml"),
                "--data",
                data.to_str().unwrap_or("."),
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--management",
                &format!("127.0.0.1:{ops}"),
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kiln serve");
        // Listening once it says so: "… (certificate sha256:…; data …)".
        let mut banner = String::new();
        let stdout = child.stdout.take().expect("kiln serve's stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut banner)
            .expect("kiln serve's banner");
        let pin = banner
            .split("(certificate ")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .unwrap_or_else(|| panic!("kiln serve did not start: {banner:?}"))
            .to_owned();
        Server { child, pin }
    }

    pub fn kill9(&mut self) {
        // Child::kill sends SIGKILL: no graceful shutdown, no final flush.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}
