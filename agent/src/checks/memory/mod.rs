//! The memory check: verified patterns over locked memory, one pinned worker per CPU.
//!
//! Each pattern is a function from word index to expected value. A *fill* sweep writes it with
//! non-temporal stores (so the traffic goes to DRAM, not just the cache); a *check* sweep reads
//! every word back and compares it, folding differences 64 words at a time and looking closer
//! only when a block differs. Every word written is read back and compared.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kiln_protocol::Check;
use kiln_protocol::suite::{MemoryCheck, Pattern};
use kiln_protocol::units::Size;
use kiln_protocol::wire::{Fault, LogLevel};

use super::{CheckKind, CheckOutput, StepContext, wrong_kind};
use crate::os::{affinity, locked::LockedRegion, pagemap::Pagemap};
use crate::stop::Stop;

mod engine;
mod simd;

use crate::rng::{fresh_seed, splitmix64};
pub use engine::{Engine, EngineRun, Injection, Mismatch, NoInjection};
pub use simd::Isa;

/// The memory check kind.
pub struct Memory;

/// Words per unit of work between stop polls and progress updates (512 KiB).
const BLOCK_WORDS: usize = 1 << 16;
/// Mismatches described one by one; past this they are only counted.
const MAX_DETAILED: usize = 64;
/// Memory left to the kernel and the agent when a suite asks for all that is available.
const RESERVE_BYTES: u64 = 64 << 20;

impl CheckKind for Memory {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn run(&self, check: &Check, ctx: &StepContext<'_>) -> anyhow::Result<CheckOutput> {
        let Check::Memory(spec) = check else {
            return Err(wrong_kind("memory", check));
        };
        let available = mem_available()
            .ok_or_else(|| anyhow::anyhow!("cannot read MemAvailable from /proc/meminfo"))?;
        let usable = available.saturating_sub(RESERVE_BYTES);
        let wanted = spec.size.resolve(available);
        let bytes = wanted.min(usable);
        if bytes < wanted {
            ctx.observer.log(
                LogLevel::Warn,
                &format!(
                    "asked for {}, only {} can be spared; testing that",
                    Size(wanted),
                    Size(bytes)
                ),
            );
        }
        let mut region = LockedRegion::new(bytes as usize)
            .map_err(|err| anyhow::anyhow!("cannot map {} of memory: {err}", Size(bytes)))?;
        if !region.locked() {
            ctx.observer.log(
                LogLevel::Warn,
                &format!("could not lock {} (RLIMIT_MEMLOCK or no CAP_IPC_LOCK): testing unlocked memory, which the kernel may swap or move", Size(region.bytes() as u64)),
            );
        }
        match region.huge_bytes() {
            Some(huge) if huge < region.bytes() => ctx.observer.log(
                LogLevel::Info,
                &format!(
                    "{} of {} on transparent huge pages (the rest on 4 KiB pages: more TLB misses, same coverage)",
                    Size(huge as u64),
                    Size(region.bytes() as u64)
                ),
            ),
            _ => {}
        }
        let cpus = ctx
            .options
            .cpus
            .clone()
            .unwrap_or_else(affinity::allowed_cpus);
        let threads = spec.threads.map_or(cpus.len(), |t| t as usize).max(1);
        let seed = spec.seed.unwrap_or_else(fresh_seed);
        ctx.observer.log(
            LogLevel::Info,
            &format!(
                "testing {} on {threads} thread(s) with {} stores, random seed {seed:#018x} (replay with `seed: {seed}`)",
                Size(region.bytes() as u64),
                Isa::detect().name()
            ),
        );
        let edac_before = edac_counts();
        let run = Engine::new(spec, seed).run(
            &mut region,
            threads,
            &cpus,
            &ctx.stop,
            &|fraction, gbps| {
                ctx.observer.progress(fraction, &format!("{gbps:.1} GB/s"));
            },
            &NoInjection,
        );
        let mut out = CheckOutput {
            faults: run.faults(&Pagemap::open()),
            ..Default::default()
        };
        let secs = run.elapsed.as_secs_f64().max(1e-9);
        out.metric("gbps", run.traffic_bytes as f64 / secs / 1e9, "GB/s");
        out.metric("bytes_verified", run.verified_bytes as f64, "B");
        out.metric("mismatches", run.mismatch_count as f64, "");
        out.metric("passes", run.passes_done as f64, "");
        match (edac_before, edac_counts()) {
            (Some(before), Some(after)) => {
                out.metric("edac_corrected", after.ce.saturating_sub(before.ce) as f64, "");
                out.metric("edac_uncorrected", after.ue.saturating_sub(before.ue) as f64, "");
                for (dimm, ce, ue) in crate::hw::edac::grew(&before, &after) {
                    ctx.observer.log(
                        LogLevel::Warn,
                        &format!(
                            "EDAC: {} ({}): {ce} corrected, {ue} uncorrected errors during the step",
                            dimm.label, dimm.location
                        ),
                    );
                    if ue > 0 {
                        // An uncorrected memory error is a fault whatever the thresholds say.
                        out.faults.push(
                            Fault::new(
                                "memory.edac_uncorrected",
                                format!(
                                    "EDAC: {ue} uncorrected memory errors on {} ({}) during the step",
                                    dimm.label, dimm.location
                                ),
                            )
                            .with("dimm", &dimm.label),
                        );
                    }
                }
                if after.ue > before.ue && !out.faults.iter().any(|f| f.code == "memory.edac_uncorrected") {
                    out.faults.push(Fault::new(
                        "memory.edac_uncorrected",
                        format!(
                            "EDAC: {} uncorrected memory errors during the step (the driver names no DIMM)",
                            after.ue - before.ue
                        ),
                    ));
                }
            }
            _ => ctx.observer.log(
                LogLevel::Warn,
                "no EDAC memory controllers in sysfs (no EDAC driver for this platform): corrected/uncorrected counts not measured",
            ),
        }
        Ok(out)
    }
}

/// How far a run is, in [0, 1]. It ends when its passes are done *and* its duration is up, so
/// the fraction is the lesser of the two: a step with `duration: 150s` whose first pass took
/// ten seconds is at 7 %, not at 100 % for two minutes.
fn done_fraction(duration: Option<Duration>, elapsed: Duration, traffic: u64, planned: u64) -> f64 {
    let work = traffic as f64 / planned.max(1) as f64;
    let fraction = match duration {
        Some(d) if !d.is_zero() => work.min(elapsed.as_secs_f64() / d.as_secs_f64()),
        _ => work,
    };
    fraction.clamp(0.0, 1.0)
}

/// Traffic one run of a pattern moves, in multiples of the region size.
fn sweeps_traffic(pattern: Pattern) -> u64 {
    match pattern {
        Pattern::OwnAddress | Pattern::Checkerboard | Pattern::SolidBits => 4,
        Pattern::WalkingOnes | Pattern::WalkingZeros => 2 * WALK_SWEEPS as u64,
        Pattern::Random => 2,
        Pattern::MovingInversions => 6,
    }
}

/// Walking patterns run this many sweeps per pass, each shifting the walk by 64/WALK_SWEEPS
/// bits; successive passes shift it by one more, so every bit position is walked over passes.
const WALK_SWEEPS: usize = 4;

fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Every EDAC memory controller's and DIMM's error counters.
fn edac_counts() -> Option<crate::hw::edac::Edac> {
    crate::hw::edac::read(std::path::Path::new("/sys/devices/system/edac/mc"))
}

#[cfg(test)]
mod tests;
