//! The NIC check: link, speed, duplex, MTU and driver of every physical interface (or the
//! named ones), and the kernel's error and drop counters as deltas over the step.

use std::time::Duration;

use kiln_protocol::Check;
use kiln_protocol::wire::{Fault, LogLevel};

use super::{CheckKind, CheckOutput, StepContext, wrong_kind};
use crate::os::{link_name, read_i64, read_trimmed, read_u64};

/// The NIC check kind.
pub struct Nic;

/// How long counters are watched when the step measures no throughput.
const OBSERVE: Duration = Duration::from_secs(3);

/// One interface as sysfs shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Interface {
    /// Kernel name.
    pub name: String,
    /// MAC address.
    pub mac: String,
    /// Driver.
    pub driver: Option<String>,
    /// Link speed in Mb/s, when known.
    pub speed_mbps: Option<u32>,
    /// `full` or `half`, when known.
    pub duplex: Option<String>,
    /// MTU.
    pub mtu: u32,
    /// Carrier present.
    pub link_up: bool,
    /// PCI (or other bus) address.
    pub bus: Option<String>,
}

/// Reads an interface from `sys` (normally `/sys`).
pub fn read_interface(sys: &str, name: &str) -> Option<Interface> {
    let dir = format!("{sys}/class/net/{name}");
    if !std::path::Path::new(&dir).exists() {
        return None;
    }
    let link_up = read_u64(format!("{dir}/carrier")) == Some(1);
    Some(Interface {
        name: name.to_owned(),
        mac: read_trimmed(format!("{dir}/address")).unwrap_or_default(),
        driver: link_name(format!("{dir}/device/driver")),
        // The kernel reports -1 (or fails the read) when the speed is unknown or the link down.
        speed_mbps: read_i64(format!("{dir}/speed"))
            .filter(|s| *s > 0)
            .map(|s| s as u32),
        duplex: read_trimmed(format!("{dir}/duplex")).filter(|d| d != "unknown"),
        mtu: read_u64(format!("{dir}/mtu")).unwrap_or(0) as u32,
        link_up,
        bus: link_name(format!("{dir}/device")),
    })
}

/// Interfaces backed by a device (PCI, virtio, USB): not loopback, bridges, veth or tunnels.
pub fn physical_interfaces(sys: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("{sys}/class/net"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("device").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Receive+transmit errors and drops of an interface.
fn counters(sys: &str, name: &str) -> (u64, u64) {
    let stat = |s: &str| read_u64(format!("{sys}/class/net/{name}/statistics/{s}")).unwrap_or(0);
    (
        stat("rx_errors") + stat("tx_errors"),
        stat("rx_dropped") + stat("tx_dropped"),
    )
}

impl CheckKind for Nic {
    fn kind(&self) -> &'static str {
        "nic"
    }

    fn run(&self, check: &Check, ctx: &StepContext<'_>) -> anyhow::Result<CheckOutput> {
        let Check::Nic(spec) = check else {
            return Err(wrong_kind("nic", check));
        };
        let sys = "/sys";
        let mut out = CheckOutput::default();
        let names = spec
            .interfaces
            .clone()
            .unwrap_or_else(|| physical_interfaces(sys));
        if names.is_empty() {
            out.skip = Some("no physical network interfaces on this node".into());
            return Ok(out);
        }
        let mut interfaces = Vec::new();
        for name in &names {
            match read_interface(sys, name) {
                Some(i) => interfaces.push(i),
                None => out.faults.push(
                    Fault::new("nic.missing", format!("interface {name} does not exist"))
                        .with("interface", name),
                ),
            }
        }
        let before: Vec<(u64, u64)> = interfaces.iter().map(|i| counters(sys, &i.name)).collect();
        for i in &interfaces {
            ctx.observer.log(
                LogLevel::Info,
                &format!(
                    "{}: {} link {}, {} {}, MTU {}, driver {}",
                    i.name,
                    i.mac,
                    if i.link_up { "up" } else { "down" },
                    i.speed_mbps
                        .map_or("speed unknown".to_owned(), |s| format!("{s} Mb/s")),
                    i.duplex.as_deref().unwrap_or("duplex unknown"),
                    i.mtu,
                    i.driver.as_deref().unwrap_or("unknown")
                ),
            );
            if spec.link && !i.link_up {
                out.faults.push(
                    Fault::new("nic.link_down", format!("{} has no link", i.name))
                        .with("interface", &i.name),
                );
            }
            if let Some(mtu) = spec.mtu {
                if i.mtu != mtu {
                    out.faults.push(
                        Fault::new(
                            "nic.mtu",
                            format!("{} has MTU {}, expected {mtu}", i.name, i.mtu),
                        )
                        .with("interface", &i.name)
                        .with("found", i.mtu),
                    );
                }
            }
            if i.duplex.as_deref() == Some("half") {
                out.degraded.push(format!("{} runs half duplex", i.name));
            }
        }
        let target = match spec.target.as_deref() {
            Some("peer") => paired(spec, &interfaces, ctx, &mut out)?,
            other => other,
        };
        let base = match target {
            None | Some("peer") => None,
            Some(target) => target_base(target, ctx),
        };
        match base {
            Some((base, token)) => {
                let fastest = interfaces.iter().filter_map(|i| i.speed_mbps).max();
                let cpus = crate::os::affinity::allowed_cpus().len();
                let (streams, why) = match spec.streams {
                    Some(n) => (n as usize, "set by the suite".to_owned()),
                    None => default_streams(fastest, cpus),
                };
                ctx.observer.log(
                    LogLevel::Info,
                    &format!("throughput with {streams} stream(s) each way ({why})"),
                );
                throughput(&base, token.as_deref(), spec, streams, ctx, &mut out)?
            }
            // Paired: measured above, the counters with it.
            None if spec.target.as_deref() == Some("peer") => {}
            None => {
                // Watch the counters for a short while so errors happening now show up.
                let window = OBSERVE.min(spec.duration.get());
                let started = std::time::Instant::now();
                while started.elapsed() < window && !ctx.stop.should_stop() {
                    ctx.observer.progress(
                        started.elapsed().as_secs_f64() / window.as_secs_f64(),
                        "watching counters",
                    );
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
        }
        let (mut errors, mut drops) = (0, 0);
        for (i, (e0, d0)) in interfaces.iter().zip(before) {
            let (e1, d1) = counters(sys, &i.name);
            errors += e1.saturating_sub(e0);
            drops += d1.saturating_sub(d0);
        }
        out.metric("errors", errors as f64, "");
        out.metric("drops", drops as f64, "");
        if let Some(slowest) = interfaces.iter().filter_map(|i| i.speed_mbps).min() {
            out.metric("speed_mbps", f64::from(slowest), "Mb/s");
        }
        Ok(out)
    }
}

/// Where `target` (`collector` or a URL) measures, with the token it takes; none when the
/// run has no collector (said in the step's log).
fn target_base(target: &str, ctx: &StepContext<'_>) -> Option<(String, Option<String>)> {
    if target != "collector" {
        return Some((target.to_owned(), None));
    }
    match &ctx.options.collector {
        Some(url) => Some((url.clone(), ctx.options.collector_token.clone())),
        None => {
            ctx.observer.log(LogLevel::Warn, "throughput skipped: `target: collector` but this run has no collector (use --collector URL)");
            None
        }
    }
}

/// `target: peer`: throughput against the partner the collector pairs this node with.
/// Returns where to measure still: the suite's `fallback` when no partner came (else that is
/// the fault `nic.no_partner`), nothing once paired.
fn paired<'s>(
    spec: &'s kiln_protocol::suite::NicCheck,
    interfaces: &[Interface],
    ctx: &StepContext<'_>,
    out: &mut CheckOutput,
) -> anyhow::Result<Option<&'s str>> {
    let fastest = interfaces.iter().filter_map(|i| i.speed_mbps).max();
    let cpus = crate::os::affinity::allowed_cpus().len();
    let streams = spec
        .streams
        .map_or_else(|| default_streams(fastest, cpus).0, |n| n as usize);
    // A partner's server asks for no token: the run's token never goes to a peer.
    let measure =
        |target: &str, out: &mut CheckOutput| throughput(target, None, spec, streams, ctx, out);
    let waited_s = match super::pair::run(spec, ctx, out, &measure)? {
        super::pair::Paired::Judged => return Ok(None),
        super::pair::Paired::NoPartner { waited_s } => waited_s,
    };
    if let Some(fallback) = spec.fallback.as_deref() {
        ctx.observer.log(
            LogLevel::Warn,
            &format!("no partner reached this node within {waited_s} s: measuring against the suite's fallback, {fallback}"),
        );
        return Ok(Some(fallback));
    }
    out.faults.push(
        Fault::new(
            "nic.no_partner",
            format!("no partner reached this node within {waited_s} s (pair_timeout)"),
        )
        .with("policy", format!("{:?}", spec.peer.unwrap_or_default())),
    );
    Ok(None)
}

/// Streams when the suite sets none: one per 10 Gb/s of the fastest link (a single TCP stream
/// tops out far below 100 Gb/s), at least one, at most one per CPU. Returns the count and why.
pub fn default_streams(fastest_mbps: Option<u32>, cpus: usize) -> (usize, String) {
    let Some(speed) = fastest_mbps else {
        return (1, "the link speed is not reported".to_owned());
    };
    let wanted = (speed as usize).div_ceil(10_000).max(1);
    let cpus = cpus.max(1);
    if wanted > cpus {
        return (
            cpus,
            format!("{speed} Mb/s link wants {wanted}, one per CPU at most"),
        );
    }
    (wanted, format!("one per 10 Gb/s of a {speed} Mb/s link"))
}

/// Measures HTTP throughput against `base` in the directions the step asks for, `streams`
/// connections each way; records `download_mbps`, `upload_mbps` (all streams together), each
/// stream's figure (`download_stream1_mbps`, …) and `mbps` (the slower direction, what
/// `min_mbps` bounds).
fn throughput(
    base: &str,
    token: Option<&str>,
    spec: &kiln_protocol::suite::NicCheck,
    streams: usize,
    ctx: &StepContext<'_>,
    out: &mut CheckOutput,
) -> anyhow::Result<()> {
    use crate::bandwidth::Way;
    use kiln_protocol::suite::Direction;
    let duration = spec.duration.get();
    let threads = crate::bandwidth::stream_threads(streams);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let mut rates = Vec::new();
    for (name, on) in [
        ("download", spec.direction != Direction::Upload),
        ("upload", spec.direction != Direction::Download),
    ] {
        if !on || ctx.stop.should_stop() {
            continue;
        }
        ctx.observer.progress(
            if name == "download" { 0.0 } else { 0.5 },
            &format!("{name} …"),
        );
        // The step's own timeout still applies: give up on a target that stalls.
        let limit = ctx
            .stop
            .deadline()
            .saturating_duration_since(std::time::Instant::now());
        let way = if name == "download" {
            Way::Download
        } else {
            Way::Upload
        };
        let measured = runtime.block_on(async {
            let work = crate::bandwidth::measure(way, base, token, duration, streams);
            tokio::time::timeout(limit, work).await
        });
        let each = match measured {
            Ok(Ok(each)) => each,
            Ok(Err(err)) => anyhow::bail!("{name} from {base} failed: {err:#}"),
            Err(_) => anyhow::bail!("{name} from {base} did not finish within the step's timeout"),
        };
        let mbps = each.total_mbps();
        let per_stream: Vec<String> = each.0.iter().map(|s| format!("{:.0}", s.mbps())).collect();
        ctx.observer.log(
            LogLevel::Info,
            &format!(
                "{name}: {mbps:.0} Mb/s against {base} over {} stream(s) ({} Mb/s)",
                each.0.len(),
                per_stream.join(" + ")
            ),
        );
        out.metric(&format!("{name}_mbps"), mbps, "Mb/s");
        if each.0.len() > 1 {
            for (i, stream) in each.0.iter().enumerate() {
                out.metric(
                    &format!("{name}_stream{}_mbps", i + 1),
                    stream.mbps(),
                    "Mb/s",
                );
            }
        }
        rates.push(mbps);
    }
    if let Some(slowest) = rates.iter().copied().reduce(f64::min) {
        out.metric("mbps", slowest, "Mb/s");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_follow_the_link_speed_up_to_the_cpus() {
        assert_eq!(default_streams(None, 8).0, 1);
        assert_eq!(default_streams(Some(1000), 8).0, 1);
        assert_eq!(default_streams(Some(10_000), 8).0, 1);
        assert_eq!(default_streams(Some(25_000), 8).0, 3);
        let (n, why) = default_streams(Some(100_000), 8);
        assert_eq!(n, 8);
        assert!(why.contains("one per CPU"), "{why}");
        assert_eq!(default_streams(Some(100_000), 16).0, 10);
    }

    #[test]
    fn interfaces_are_read_from_sysfs() {
        let root = std::env::temp_dir().join(format!("kiln-nic-{}", std::process::id()));
        let eth = root.join("class/net/eth0");
        std::fs::create_dir_all(eth.join("statistics")).unwrap();
        std::fs::create_dir_all(root.join("devices/pci0000:00/0000:00:03.0/driver-target/e1000e"))
            .unwrap();
        std::os::unix::fs::symlink(
            root.join("devices/pci0000:00/0000:00:03.0"),
            eth.join("device"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            root.join("devices/pci0000:00/0000:00:03.0/driver-target/e1000e"),
            root.join("devices/pci0000:00/0000:00:03.0/driver"),
        )
        .unwrap();
        for (file, value) in [
            ("address", "52:54:00:12:34:56"),
            ("carrier", "1"),
            ("speed", "1000"),
            ("duplex", "full"),
            ("mtu", "1500"),
        ] {
            std::fs::write(eth.join(file), value).unwrap();
        }
        std::fs::create_dir_all(root.join("class/net/lo")).unwrap();
        std::fs::write(root.join("class/net/lo/speed"), "-1").unwrap();
        let sys = root.display().to_string();
        assert_eq!(physical_interfaces(&sys), ["eth0"]);
        let i = read_interface(&sys, "eth0").unwrap();
        assert_eq!((i.speed_mbps, i.mtu, i.link_up), (Some(1000), 1500, true));
        assert_eq!(i.driver.as_deref(), Some("e1000e"));
        assert_eq!(i.bus.as_deref(), Some("0000:00:03.0"));
        assert_eq!(read_interface(&sys, "lo").unwrap().speed_mbps, None);
        std::fs::remove_dir_all(root).unwrap();
    }
}
