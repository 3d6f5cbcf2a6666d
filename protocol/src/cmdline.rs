//! The kernel command line the collector hands a node for its Linux stage, and the agent
//! reads back from `/proc/cmdline`: the collector's URL, the run, the one-time bootstrap token
//! and the node, as `kiln.url=… kiln.run=… kiln.token=… kiln.node=…`. Written and read here
//! only (`ipxe/image/init` passes `/proc/cmdline` to the agent untouched).

/// What the Linux stage's command line carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootArgs {
    /// The collector's base URL, as the node reaches it.
    pub url: String,
    /// The run.
    pub run: i64,
    /// The one-time bootstrap token (exchanged for the session token on the first call).
    pub token: String,
    /// The node.
    pub node: i64,
}

/// The console arguments every Linux stage gets: the screen and the serial console the
/// collector follows.
pub const CONSOLES: &str = "console=tty0 console=ttyS0,115200";

impl BootArgs {
    /// The command line: consoles first, then the `kiln.*` keys.
    pub fn render(&self) -> String {
        format!(
            "{CONSOLES} kiln.url={} kiln.run={} kiln.token={} kiln.node={}",
            self.url, self.run, self.token, self.node
        )
    }
}

/// `kiln.NAME=value` from a command line (the last one wins, as the kernel's own parameters).
pub fn value<'a>(cmdline: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("kiln.{name}=");
    cmdline
        .split_whitespace()
        .filter_map(|arg| arg.strip_prefix(key.as_str()))
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_collector_writes_the_agent_reads_back() {
        let args = BootArgs {
            url: "http://10.0.2.100".into(),
            run: 42,
            token: "ab".repeat(32),
            node: 7,
        };
        let line = args.render();
        assert!(
            line.starts_with("console=tty0 console=ttyS0,115200 "),
            "{line}"
        );
        // With the kernel's own words around it, as /proc/cmdline shows it.
        let proc = format!("BOOT_IMAGE=vmlinuz {line} quiet\n");
        assert_eq!(value(&proc, "url"), Some("http://10.0.2.100"));
        assert_eq!(value(&proc, "run"), Some("42"));
        assert_eq!(value(&proc, "token"), Some(args.token.as_str()));
        assert_eq!(value(&proc, "node"), Some("7"));
        assert_eq!(value(&proc, "nothing"), None);
        // Not a prefix match: `kiln.runx=` is not `kiln.run=`.
        assert_eq!(value("kiln.runx=1", "run"), None);
        assert_eq!(value("kiln.run=1 kiln.run=2", "run"), Some("2"));
    }
}
