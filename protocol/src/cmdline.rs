//! The kernel command line the collector hands a node for its Linux stage, and the agent
//! reads back from `/proc/cmdline`: the collector's URL, the run, the one-time bootstrap token
//! and the node, as `kiln.url=… kiln.run=… kiln.token=… kiln.node=…`. Written and read here
//! only (`ipxe/image/init` passes `/proc/cmdline` to the agent untouched).

/// What the Linux stage's command line carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootArgs {
    /// The collectors' base URLs as the node reaches them, comma-separated: the agent uses
    /// the first and goes on with the next when one stops answering ([`urls`]).
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

/// Most collectors one command line names.
pub const MAX_COLLECTORS: usize = 16;

/// The collectors' base URLs from `kiln.url=` (one, or several separated by commas), each
/// `http://` or `https://` with no space or control character; without a trailing slash.
pub fn urls(value: &str) -> Result<Vec<String>, String> {
    let list: Vec<&str> = value.split(',').collect();
    if list.len() > MAX_COLLECTORS {
        return Err(format!(
            "kiln.url names {} collectors; at most {MAX_COLLECTORS}",
            list.len()
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, url)| {
            let host = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"));
            let ok = host.is_some_and(|h| !h.is_empty() && !h.starts_with('/'))
                && url.len() <= 256
                && url.chars().all(|c| c.is_ascii_graphic());
            if ok {
                Ok(url.trim_end_matches('/').to_owned())
            } else {
                Err(format!(
                    "kiln.url's collector {} ({url:?}) is not an http:// or https:// URL without spaces, of at most 256 characters",
                    i + 1
                ))
            }
        })
        .collect()
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
    fn several_collectors_are_read_in_order_and_hostile_lists_refused() {
        assert_eq!(
            urls("http://10.0.0.1:8080/").unwrap(),
            ["http://10.0.0.1:8080"]
        );
        assert_eq!(
            urls("http://a:8080,https://b").unwrap(),
            ["http://a:8080", "https://b"]
        );
        let many = vec!["http://a"; MAX_COLLECTORS + 1].join(",");
        for (bad, says) in [
            ("", "collector 1"),
            ("http://a,,http://b", "collector 2"),
            ("http://a,", "collector 2"),
            ("ftp://a", "collector 1"),
            ("http://", "collector 1"),
            ("http://a,http://b\u{1b}[2J", "collector 2"),
            ("http://a b", "collector 1"),
            (many.as_str(), "at most 16"),
        ] {
            let err = urls(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
        let long = format!("http://{}", "a".repeat(300));
        assert!(urls(&long).is_err());
    }

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
