//! The exec check: runs a vendor tool (no shell), keeps a bounded copy of its output for the
//! log, kills its whole process group on timeout or Ctrl-C, passes on listed exit codes, and
//! reads metrics it writes as a JSON object to the file named by `$KILN_METRICS`.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use kiln_protocol::Check;
use kiln_protocol::wire::{Fault, LogLevel};

use super::{CheckKind, CheckOutput, StepContext, wrong_kind};

/// The exec check kind.
pub struct Exec;

impl CheckKind for Exec {
    fn kind(&self) -> &'static str {
        "exec"
    }

    fn run(&self, check: &Check, ctx: &StepContext<'_>) -> anyhow::Result<CheckOutput> {
        let Check::Exec(spec) = check else {
            return Err(wrong_kind("exec", check));
        };
        let (program, args) = spec
            .argv
            .split_first()
            .ok_or_else(|| anyhow::anyhow!("exec step has an empty argv"))?;
        let metrics_file = std::env::temp_dir().join(format!(
            "kiln-metrics-{}-{:08x}.json",
            std::process::id(),
            crate::rng::fresh_seed() as u32
        ));
        let mut command = Command::new(program);
        // The agent's own settings (KILN_URL, KILN_RUN, a KILN_TOKEN an operator exported)
        // are not the tool's business: a vendor tool never sees a token of this run.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("KILN_") {
                command.env_remove(&key);
            }
        }
        command
            .args(args)
            .envs(&spec.env)
            .env("KILN_METRICS", &metrics_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout kills everything it started.
            .process_group(0);
        if let Some(cwd) = &spec.cwd {
            command.current_dir(cwd);
        }
        let mut child = command
            .spawn()
            .map_err(|err| anyhow::anyhow!("cannot start {program}: {err}"))?;
        let limit = spec.max_output.bytes();
        let stdout = child
            .stdout
            .take()
            .map(|s| std::thread::spawn(move || read_bounded(s, limit)));
        let stderr = child
            .stderr
            .take()
            .map(|s| std::thread::spawn(move || read_bounded(s, limit)));
        let pgid = child.id() as i32;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if ctx.stop.should_stop() {
                // SAFETY: kill has no memory preconditions; a negative pid names the group
                // the child leads, which only holds processes it started.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        for (stream, handle) in [("stdout", stdout), ("stderr", stderr)] {
            let Some((text, dropped)) = handle.and_then(|h| h.join().ok()) else {
                continue;
            };
            for line in text.lines() {
                ctx.observer
                    .log(LogLevel::Info, &format!("{stream}: {line}"));
            }
            if dropped > 0 {
                ctx.observer.log(
                    LogLevel::Warn,
                    &format!(
                        "{stream}: {dropped} more bytes dropped (max_output {})",
                        spec.max_output
                    ),
                );
            }
        }
        let metrics = std::fs::read(&metrics_file).ok();
        let _ = std::fs::remove_file(&metrics_file);
        let Some(status) = status else {
            anyhow::bail!(
                "{program} was killed: the step was stopped ({:?})",
                ctx.stop.reason()
            );
        };
        let mut out = CheckOutput::default();
        match status.code() {
            Some(code) if spec.pass_codes.contains(&code) => {}
            Some(code) => out.faults.push(
                Fault::new(
                    "exec.exit_code",
                    format!(
                        "{program} exited with {code}, expected one of {:?}",
                        spec.pass_codes
                    ),
                )
                .with("exit_code", code),
            ),
            None => out.faults.push(Fault::new(
                "exec.signal",
                format!("{program} was killed by a signal ({status})"),
            )),
        }
        if let Some(bytes) = metrics {
            let parsed: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes)
                .map_err(|err| {
                    anyhow::anyhow!(
                        "{program} wrote $KILN_METRICS that is not a JSON object of numbers: {err}"
                    )
                })?;
            for (name, value) in parsed {
                let value = value.as_f64().ok_or_else(|| {
                    anyhow::anyhow!("metric {name:?} from {program} is not a number")
                })?;
                out.metric(&name, value, "");
            }
        }
        Ok(out)
    }
}

/// Reads a stream to its end, keeping the first `limit` bytes; returns them and the count of
/// bytes dropped.
fn read_bounded(mut stream: impl Read, limit: u64) -> (String, u64) {
    let mut kept = Vec::new();
    let mut dropped = 0u64;
    let mut chunk = [0u8; 8192];
    while let Ok(n) = stream.read(&mut chunk) {
        if n == 0 {
            break;
        }
        let room = (limit as usize).saturating_sub(kept.len()).min(n);
        kept.extend_from_slice(&chunk[..room]);
        dropped += (n - room) as u64;
    }
    (String::from_utf8_lossy(&kept).into_owned(), dropped)
}

#[cfg(test)]
mod tests {
    use super::read_bounded;

    #[test]
    fn output_is_bounded_and_the_rest_counted() {
        let input = vec![b'x'; 20_000];
        let (kept, dropped) = read_bounded(&input[..], 1000);
        assert_eq!((kept.len(), dropped), (1000, 19_000));
    }
}
