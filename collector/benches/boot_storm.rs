//! A boot storm at scale: the collector's real tracker (`kiln_collector::tracker`) driving a
//! simulated fabric — racks of 40 nodes, each node's link 25 Gb/s each way, each rack's
//! uplink oversubscribed 3:1, the collector on 2 × 25 Gb/s — while every node fetches the
//! payload (512 MiB in 4 MiB pieces) at once. Printed for 100, 1,000 and 10,000 nodes, with
//! peers and from the collector alone: time until each node holds it (p50, p99, max), against
//! one node alone on an idle fabric, and the collector's bytes in payload copies (per rack).
//!
//! The fabric is a fluid model: every link's capacity is shared equally by the transfers
//! crossing it, and a transfer moves at the smallest share along its path (the node's uplink
//! or the collector's, the source rack's uplink and the destination rack's downlink when the
//! racks differ, the node's downlink). Time advances to the next transfer's end (at least
//! [`MIN_STEP`]), so a piece that ends inside a step is counted at its end. Settings:
//! `KILN_STORM_NODES=100,1000`, `KILN_STORM_MIB=512`.

use std::time::Duration;

use kiln_collector::tracker::{Fetched, Grant, NodeId, Settings, Source, Tracker};

#[path = "boot_storm/real.rs"]
mod real;

const RACK: usize = 40;
const PIECE: u64 = 4 << 20;

/// The fabric's links, in Gb/s.
#[derive(Clone, Copy)]
struct Links {
    node: f64,
    /// A rack's uplink over the sum of its nodes' links (3: oversubscribed 3:1).
    oversubscription: f64,
    collector: f64,
}

/// The hall the issue names: 25 Gb/s nodes, uplinks 3:1, the collector on 2 × 25 Gb/s.
const HALL: Links = Links {
    node: 25.0,
    oversubscription: 3.0,
    collector: 50.0,
};
const MIN_STEP: f64 = 0.000_25;
const IMAGE: &str = "payload";

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

/// A link's capacity in bytes per second.
fn bytes_per_s(gbps: f64) -> f64 {
    gbps * 1e9 / 8.0
}

/// One transfer in flight.
struct Flow {
    node: usize,
    grant: Grant,
    left: f64,
    /// The links it crosses (indexes into the link table).
    path: [Option<usize>; 4],
}

/// The links: each node's up and down, each rack's up and down, the collector's up.
struct Fabric {
    capacity: Vec<f64>,
    nodes: usize,
    racks: usize,
}

impl Fabric {
    fn new(nodes: usize, links: Links) -> Fabric {
        let racks = nodes.div_ceil(RACK);
        let node = bytes_per_s(links.node);
        let rack = bytes_per_s(links.node * RACK as f64 / links.oversubscription);
        let mut capacity = vec![node; 2 * nodes];
        capacity.extend(std::iter::repeat_n(rack, 2 * racks));
        capacity.push(bytes_per_s(links.collector));
        Fabric {
            capacity,
            nodes,
            racks,
        }
    }
    fn up(&self, n: usize) -> usize {
        n
    }
    fn down(&self, n: usize) -> usize {
        self.nodes + n
    }
    fn rack_up(&self, r: usize) -> usize {
        2 * self.nodes + r
    }
    fn rack_down(&self, r: usize) -> usize {
        2 * self.nodes + self.racks + r
    }
    fn collector(&self) -> usize {
        2 * self.nodes + 2 * self.racks
    }

    /// The links a piece crosses from `source` to node `to`.
    fn path(&self, source: Source, to: usize) -> [Option<usize>; 4] {
        let rack = to / RACK;
        match source {
            // The collector sits in the core: into the node's rack, then its link.
            Source::Collector => [
                Some(self.collector()),
                Some(self.rack_down(rack)),
                Some(self.down(to)),
                None,
            ],
            Source::Peer(p) => {
                let p = p as usize;
                let (pr, same) = (p / RACK, p / RACK == rack);
                [
                    Some(self.up(p)),
                    (!same).then(|| self.rack_up(pr)),
                    (!same).then(|| self.rack_down(rack)),
                    Some(self.down(to)),
                ]
            }
        }
    }
}

/// What one storm gave: each node's completion time and the collector's bytes.
struct Storm {
    done_s: Vec<f64>,
    collector_bytes: u64,
}

fn storm(nodes: usize, payload: u64, links: Links, settings: Settings) -> Storm {
    let pieces = payload.div_ceil(PIECE) as usize;
    let fabric = Fabric::new(nodes, links);
    let mut tracker = Tracker::new(settings);
    for n in 0..nodes {
        tracker.join(
            n as NodeId,
            IMAGE,
            pieces,
            Some(&format!("R{}", n / RACK)),
            None,
        );
    }
    let mut flows: Vec<Flow> = Vec::new();
    let mut done_s = vec![f64::NAN; nodes];
    let mut waiting: Vec<usize> = (0..nodes).collect();
    let mut now = 0.0f64;
    let mut collector_bytes = 0u64;
    let mut users = vec![0u32; fabric.capacity.len()];
    loop {
        // Every node not done asks for what it may start (a source may have come free).
        for n in waiting.drain(..) {
            while let Ok(Some(grant)) = tracker.next(n as NodeId) {
                let len = if grant.piece + 1 == pieces {
                    payload - PIECE * (pieces as u64 - 1)
                } else {
                    PIECE
                };
                flows.push(Flow {
                    node: n,
                    grant,
                    left: len as f64,
                    path: fabric.path(grant.source, n),
                });
            }
        }
        if flows.is_empty() {
            break;
        }
        // Each flow at the smallest equal share along its path.
        users.iter_mut().for_each(|u| *u = 0);
        for f in &flows {
            for l in f.path.iter().flatten() {
                users[*l] += 1;
            }
        }
        let rate = |f: &Flow| {
            f.path
                .iter()
                .flatten()
                .map(|l| fabric.capacity[*l] / users[*l] as f64)
                .fold(f64::INFINITY, f64::min)
        };
        let step = flows
            .iter()
            .map(|f| f.left / rate(f))
            .fold(f64::INFINITY, f64::min)
            .max(MIN_STEP);
        now += step;
        let mut kept = Vec::with_capacity(flows.len());
        let mut ended: Vec<Flow> = Vec::new();
        for mut f in flows.drain(..) {
            f.left -= rate(&f) * step;
            if f.left <= 1.0 {
                ended.push(f);
            } else {
                kept.push(f);
            }
        }
        flows = kept;
        for f in ended {
            if f.grant.source == Source::Collector {
                collector_bytes += PIECE;
            }
            if tracker
                .done(f.node as NodeId, f.grant, Fetched::Verified)
                .unwrap_or(false)
            {
                done_s[f.node] = now;
            }
        }
        // Anyone may find a source now: every node not done asks again.
        waiting = (0..nodes).filter(|n| done_s[*n].is_nan()).collect();
    }
    Storm {
        done_s,
        collector_bytes: collector_bytes.min(payload * nodes as u64),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let counts = env_list("KILN_STORM_NODES", &[100, 1000, 10_000]);
    let payload = env_list("KILN_STORM_MIB", &[512])[0] as u64 * (1 << 20);
    if std::env::var_os(real::FETCHER).is_some() {
        real::fetcher();
        return;
    }
    let alone = storm(1, payload, HALL, Settings::default()).done_s[0];
    println!(
        "boot storm: {} MiB payload in {} MiB pieces; racks of {RACK}, nodes {} Gb/s, rack uplinks {}:1, collector {} Gb/s",
        payload >> 20,
        PIECE >> 20,
        HALL.node,
        HALL.oversubscription,
        HALL.collector
    );
    println!(
        "one node alone on an idle fabric: {:.3} s (target at 10,000 nodes: p99 ≤ 4× that, collector ≤ 1.5 copies per rack)",
        alone
    );
    println!(
        "{:>7} {:>14} {:>9} {:>9} {:>9} {:>10} {:>12} {:>12} {:>9}",
        "nodes", "source", "p50 s", "p99 s", "max s", "p99/alone", "collector", "per rack", "wall"
    );
    for &nodes in &counts {
        let racks = nodes.div_ceil(RACK) as f64;
        for (name, settings) in [
            ("peers", Settings::default()),
            (
                "collector only",
                Settings {
                    per_peer: 0,
                    collector: usize::MAX,
                    ..Settings::default()
                },
            ),
        ] {
            let started = std::time::Instant::now();
            let s = storm(nodes, payload, HALL, settings);
            let mut t = s.done_s.clone();
            assert!(t.iter().all(|x| x.is_finite()), "a node never completed");
            t.sort_by(f64::total_cmp);
            let copies = s.collector_bytes as f64 / payload as f64;
            println!(
                "{nodes:>7} {name:>14} {:>9.3} {:>9.3} {:>9.3} {:>9.1}× {:>8.1} cps {:>8.2} cps {:>8.1?}",
                percentile(&t, 0.5),
                percentile(&t, 0.99),
                t[t.len() - 1],
                percentile(&t, 0.99) / alone,
                copies,
                copies / racks,
                Duration::from_secs_f64(started.elapsed().as_secs_f64()),
            );
        }
    }
    let real_nodes = env_list("KILN_STORM_REAL", &[200])[0];
    if real_nodes > 0 {
        real::check(real_nodes, 64 << 20);
    }
}
