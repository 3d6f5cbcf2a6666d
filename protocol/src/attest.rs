//! What makes a run believable beyond its results: the line on the node's own console that
//! only the holder of the run's session exchange can write (the attestation), and the
//! collector's clock, which must agree that the work took as long as the suite says.
//!
//! The attestation: the session exchange returns a fresh key; the agent writes
//! `kiln-attest run=R node=N proof=P` to the node's console, where `P` is HMAC-SHA256 of
//! `kiln-attest run=R node=N` under that key. The collector reads the console out of band (the
//! BMC's serial over LAN, the lab's socket), so a party on the boot network that took the
//! token can post events but cannot make the node's console show the line.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::plan::Plan;

/// A site's rule for runs no console vouches for (`attestation:` in `kiln.yaml`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attestation {
    /// An unattested run is not shippable.
    #[default]
    Required,
    /// An unattested run is shippable, and still says `unattested` wherever it is shown.
    Optional,
}

/// Whether a node may ship on `verdict` under the rule its run was started with.
pub fn shippable(verdict: crate::wire::Verdict, rule: Attestation) -> bool {
    verdict.is_good()
        || (verdict == crate::wire::Verdict::Unattested && rule == Attestation::Optional)
}

/// What starts an attestation line.
pub const PREFIX: &str = "kiln-attest";

/// Longest line the console scanner looks at for an attestation (the line is about 120 bytes).
pub const MAX_LINE: usize = 256;

/// What is signed: the run and the node it belongs to.
fn message(run: i64, node: i64) -> String {
    format!("{PREFIX} run={run} node={node}")
}

/// The proof for `run` on `node` under `key` (the session exchange's attestation key), as
/// 64 lowercase hex digits.
pub fn proof(key: &str, run: i64, node: i64) -> String {
    // HMAC takes a key of any length; this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(message(run, node).as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The line the agent writes to the console (without its line ending).
pub fn line(key: &str, run: i64, node: i64) -> String {
    format!("{} proof={}", message(run, node), proof(key, run, node))
}

/// An attestation line as read off a console: what it claims, not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The run it names.
    pub run: i64,
    /// The node it names.
    pub node: i64,
    /// Its proof (64 lowercase hex digits).
    pub proof: String,
}

/// Reads an attestation out of one console line: the prefix may follow anything (a kernel
/// timestamp, escape sequences), and what follows it must be exactly `run=R node=N proof=P`.
/// `None` for any other line, including a damaged one (serial noise is not an attack; a
/// well-formed line with the wrong run or proof is, and the collector treats it so).
pub fn parse(line: &str) -> Option<Claim> {
    if line.len() > MAX_LINE {
        return None;
    }
    let at = line.find(PREFIX)?;
    let mut words = line[at + PREFIX.len()..].split_whitespace();
    let run = number(words.next()?.strip_prefix("run=")?)?;
    let node = number(words.next()?.strip_prefix("node=")?)?;
    let proof = words.next()?.strip_prefix("proof=")?;
    if words.next().is_some()
        || proof.len() != 64
        || !proof
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    Some(Claim {
        run,
        node,
        proof: proof.to_owned(),
    })
}

/// A positive decimal id of at most 18 digits, without sign or leading zeros.
fn number(text: &str) -> Option<i64> {
    let ok = !text.is_empty()
        && text.len() <= 18
        && text.bytes().all(|b| b.is_ascii_digit())
        && !text.starts_with('0');
    ok.then(|| text.parse().ok()).flatten()
}

/// Shortest plausible time from the kernel being handed out to the agent's first word: the
/// kernel and initramfs fetched, Linux booted, the network up. No real or virtual node does
/// it faster; a run that ends sooner after its boot than this plus its steps was not run.
pub const LEAST_BOOT: Duration = Duration::from_secs(3);

/// How far the collector's clock may fall short of a plan's durations before a result is
/// implausible: timer granularity and a wall clock stepped by NTP, never a step's worth.
fn slack(least: Duration) -> Duration {
    least / 50 + Duration::from_secs(2)
}

/// The least time the plan's steps up to and including `index` take, run in order: the sum of
/// the durations their parameters fix, over the steps that did their work (`did_work(i)`: a
/// pass, or a pass short of a `degraded:` target). A skipped, failed or errored step may end at
/// once, and a step whose length depends on the node counts 0. A `parallel:` group's members
/// ran at once: they count as their longest.
pub fn least_elapsed(plan: &Plan, index: usize, did_work: impl Fn(usize) -> bool) -> Duration {
    let mut total = Duration::ZERO;
    // The group being summed: its first member and its longest so far.
    let mut group: Option<(usize, Duration)> = None;
    for s in plan
        .steps
        .iter()
        .take(index.saturating_add(1))
        .filter(|s| did_work(s.index))
    {
        let own = s.check.own_duration().unwrap_or_default();
        match (&s.group, &mut group) {
            (Some(g), Some((first, longest))) if *first == g.first => {
                *longest = (*longest).max(own);
            }
            (member, open) => {
                total += open.take().map_or(Duration::ZERO, |(_, l)| l);
                match member {
                    Some(g) => group = Some((g.first, own)),
                    None => total += own,
                }
            }
        }
    }
    total + group.map_or(Duration::ZERO, |(_, l)| l)
}

/// Why a result that arrived `took` after its start cannot be true when the work takes at
/// least `least`, if it cannot; `what` names the work for the message.
pub fn implausible(what: &str, least: Duration, took: Duration) -> Option<String> {
    (took + slack(least) < least).then(|| {
        format!(
            "implausible: {what} needs at least {} but was reported after {} by the collector's clock",
            seconds(least),
            seconds(took)
        )
    })
}

fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.1} s")
    } else {
        format!("{s:.0} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "8d1c0f6e3a2b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d";

    #[test]
    fn the_line_the_agent_writes_is_the_claim_the_collector_reads() {
        let line = line(KEY, 42, 7);
        assert!(
            line.starts_with("kiln-attest run=42 node=7 proof="),
            "{line}"
        );
        // With what a console adds around it: a kernel timestamp, colour, a carriage return.
        let seen = format!("[   12.345678] \x1b[0m{line}\r");
        let claim = parse(seen.trim_end()).unwrap();
        assert_eq!((claim.run, claim.node), (42, 7));
        assert_eq!(claim.proof, proof(KEY, 42, 7));
        // The proof binds the key, the run and the node.
        assert_ne!(proof(KEY, 43, 7), claim.proof);
        assert_ne!(proof(KEY, 42, 8), claim.proof);
        assert_ne!(proof(&KEY.replace('8', "9"), 42, 7), claim.proof);
    }

    #[test]
    fn hostile_and_damaged_lines_are_not_claims() {
        let good = line(KEY, 42, 7);
        let hex = proof(KEY, 42, 7);
        for bad in [
            String::new(),
            "kiln-attest".into(),
            "kiln-attest run=42 node=7".into(),
            format!("kiln-attest run=42 node=7 proof={}", &hex[..63]),
            format!("kiln-attest run=42 node=7 proof={}", hex.to_uppercase()),
            format!("kiln-attest run=42 node=7 proof={hex} extra"),
            format!("kiln-attest run=-42 node=7 proof={hex}"),
            format!("kiln-attest run=042 node=7 proof={hex}"),
            format!("kiln-attest run=0 node=7 proof={hex}"),
            format!("kiln-attest run=99999999999999999999 node=7 proof={hex}"),
            format!("kiln-attest node=7 run=42 proof={hex}"),
            format!("kiln-attest run=4\u{200b}2 node=7 proof={hex}"),
            format!("{}{good}", "x".repeat(MAX_LINE)),
        ] {
            assert_eq!(parse(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_result_sooner_than_the_work_is_implausible_and_a_late_one_is_not() {
        let minute = Duration::from_secs(60);
        let why = implausible("step 'memory'", minute, Duration::from_millis(800)).unwrap();
        assert_eq!(
            why,
            "implausible: step 'memory' needs at least 60 s but was reported after 0.8 s by the collector's clock"
        );
        assert_eq!(implausible("x", minute, minute), None);
        assert_eq!(implausible("x", minute, Duration::from_secs(3600)), None);
        // A clock a little behind is not an attack: 2 % and 2 s.
        assert_eq!(implausible("x", minute, Duration::from_secs(57)), None);
        assert!(implausible("x", minute, Duration::from_secs(56)).is_some());
        assert_eq!(implausible("x", Duration::ZERO, Duration::ZERO), None);
    }

    #[test]
    fn the_least_time_adds_up_the_steps_in_order() {
        let plan = crate::load(
            "t.yaml",
            b"suite: t\ndescription: d\nsteps:\n  - name: soak\n    watch: {duration: 30s}\n  - name: tool\n    exec: {argv: [true]}\n  - name: cool\n    watch: {duration: 1m}\n",
        )
        .unwrap();
        let all = |_| true;
        assert_eq!(least_elapsed(&plan, 0, all), Duration::from_secs(30));
        assert_eq!(least_elapsed(&plan, 1, all), Duration::from_secs(30));
        assert_eq!(least_elapsed(&plan, 2, all), Duration::from_secs(90));
        assert_eq!(
            least_elapsed(&plan, usize::MAX, all),
            Duration::from_secs(90)
        );
        // A soak that was skipped (an optional check with nothing to look at) took no time.
        let not_first = |i| i != 0;
        assert_eq!(least_elapsed(&plan, 2, not_first), Duration::from_secs(60));
    }

    #[test]
    fn a_group_counts_once_at_its_longest_member() {
        let plan = crate::load(
            "t.yaml",
            b"suite: t\ndescription: d\nsteps:\n  - name: soak\n    watch: {duration: 30s}\n  - name: g\n    parallel:\n      duration: 1m\n      steps:\n        - name: a\n          watch: {duration: 5s}\n        - name: b\n          exec: {argv: [true]}\n        - name: c\n          cpu: {}\n  - name: cool\n    watch: {duration: 10s}\n",
        )
        .unwrap();
        let all = |_| true;
        let s = Duration::from_secs;
        // The soak, then the group's minute (not three), then the cool-down.
        assert_eq!(least_elapsed(&plan, 1, all), s(90));
        assert_eq!(least_elapsed(&plan, 2, all), s(90));
        assert_eq!(least_elapsed(&plan, 3, all), s(90));
        assert_eq!(least_elapsed(&plan, usize::MAX, all), s(100));
        // Members that did no work take no time; the others still count once.
        assert_eq!(least_elapsed(&plan, 4, |i| i != 1), s(100));
        assert_eq!(least_elapsed(&plan, 4, |i| i != 1 && i != 3), s(40));
    }
}
