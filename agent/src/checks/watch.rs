//! The watch check: the node left idle for the step's duration. The watchers every step has
//! (machine checks, the BMC's event log, PCIe AER, the kernel log; see the runner) do the
//! finding; this check keeps the time, samples the temperature sensors each second and
//! reports the hottest reading.

use std::time::{Duration, Instant};

use kiln_protocol::Check;
use kiln_protocol::wire::LogLevel;

use super::{CheckKind, CheckOutput, StepContext, wrong_kind};

/// The watch check kind.
pub struct Watch;

/// Time between two temperature samples.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

impl CheckKind for Watch {
    fn kind(&self) -> &'static str {
        "watch"
    }

    fn run(&self, check: &Check, ctx: &StepContext<'_>) -> anyhow::Result<CheckOutput> {
        let Check::Watch(spec) = check else {
            return Err(wrong_kind("watch", check));
        };
        let total = spec.duration.get();
        let started = Instant::now();
        let mut sensors = sysinfo::Components::new_with_refreshed_list().ok();
        let mut hottest: Option<f64> = None;
        loop {
            if let Some(sensors) = sensors.as_mut() {
                sensors.refresh(false);
                for t in sensors.iter().filter_map(|c| c.temperature()) {
                    let t = f64::from(t);
                    if t.is_finite() && t > 0.0 {
                        hottest = Some(hottest.map_or(t, |h| h.max(t)));
                    }
                }
            }
            let elapsed = started.elapsed();
            let status = match hottest {
                Some(t) => format!("watching, {t:.0} °C"),
                None => "watching".to_owned(),
            };
            ctx.observer.progress(
                (elapsed.as_secs_f64() / total.as_secs_f64().max(1e-9)).min(1.0),
                &status,
            );
            if elapsed >= total {
                break;
            }
            // A watch cut short has not watched what the suite asked for: never a pass.
            if let Some(reason) = ctx.stop.reason() {
                anyhow::bail!(
                    "watched {:.0}s of {}s, then stopped ({reason:?})",
                    elapsed.as_secs_f64(),
                    total.as_secs()
                );
            }
            std::thread::sleep(SAMPLE_EVERY.min(total - elapsed));
        }
        let mut out = CheckOutput::default();
        match hottest {
            Some(t) => out.metric("temp_c", t, "°C"),
            None => ctx.observer.log(
                LogLevel::Info,
                "no temperature sensors: temperature not measured",
            ),
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::{RunOptions, StepObserver};
    use crate::stop::{Interrupt, Stop};
    use kiln_protocol::suite::WatchCheck;
    use kiln_protocol::units::HumanDuration;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Seen(Mutex<Vec<f64>>);

    impl StepObserver for Seen {
        fn progress(&self, fraction: f64, _status: &str) {
            self.0.lock().unwrap().push(fraction);
        }
        fn log(&self, _level: LogLevel, _line: &str) {}
    }

    fn watch(duration: Duration, stop: Stop, seen: &Seen) -> anyhow::Result<CheckOutput> {
        let check = Check::Watch(WatchCheck {
            duration: HumanDuration(duration),
            max_temp_c: None,
            degraded: None,
        });
        let options = RunOptions::default();
        let ctx = StepContext {
            step: 0,
            stop,
            observer: seen,
            options: &options,
        };
        Watch.run(&check, &ctx)
    }

    #[test]
    fn a_watch_lasts_its_duration_and_reports_progress_to_the_end() {
        let seen = Seen::default();
        let started = Instant::now();
        let out = watch(
            Duration::from_millis(1500),
            Stop::new(Duration::from_secs(30), Interrupt::new()),
            &seen,
        )
        .expect("watch");
        assert!(started.elapsed() >= Duration::from_millis(1500));
        assert!(out.faults.is_empty());
        let fractions = seen.0.lock().unwrap();
        assert!(fractions.len() >= 2, "{fractions:?}");
        assert_eq!(fractions.last(), Some(&1.0));
    }

    #[test]
    fn a_watch_cut_short_is_an_error_not_a_pass() {
        let seen = Seen::default();
        let interrupt = Interrupt::new();
        interrupt.trigger();
        let err = watch(
            Duration::from_secs(60),
            Stop::new(Duration::from_secs(120), interrupt),
            &seen,
        )
        .expect_err("an interrupted watch must not pass");
        assert!(err.to_string().contains("of 60s, then stopped"), "{err}");
    }
}
