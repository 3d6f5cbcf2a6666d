//! What runs only while a stage is open: the console capture of each run's memtest stage, the
//! console tail followed through its Linux stage, and the bandwidth streams its agent opened.
//! Every transition that ends a stage hands its [`Ended`] here, so none outlives its stage:
//! two captures never run for one node, an old one can never reset a node in the middle of
//! its next run, and a closed run's streams are cut.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

use super::{Ended, Stage};

/// The registry.
#[derive(Default)]
pub struct Captures {
    running: Mutex<HashMap<i64, watch::Sender<bool>>>,
    tails: Mutex<HashMap<i64, watch::Sender<bool>>>,
    streams: Mutex<HashMap<i64, watch::Sender<bool>>>,
    /// Each run whose console this collector reads under a lease: its node and the lease's
    /// epoch (`crate::memtest::leases`).
    leased: Mutex<HashMap<i64, (i64, i64)>>,
}

impl Captures {
    /// Registers the capture of `run_id`'s memtest stage; the receiver turns `true` when the
    /// stage ends some other way. A capture already registered for the run is stopped.
    pub fn register(&self, run_id: i64) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        if let Some(old) = self.lock().insert(run_id, tx) {
            let _ = old.send(true);
        }
        rx
    }

    /// Registers the console tail of `run_id`'s Linux stage; the receiver turns `true` when
    /// that stage ends.
    pub fn register_tail(&self, run_id: i64) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        let mut tails = self.tails.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = tails.insert(run_id, tx) {
            let _ = old.send(true);
        }
        rx
    }

    /// Registers the console tail of `run_id`'s Linux stage unless one is followed already
    /// (memtest86+ started it, or an earlier boot script of this stage did): `None` then.
    pub fn register_tail_once(&self, run_id: i64) -> Option<watch::Receiver<bool>> {
        let mut tails = self.tails.lock().unwrap_or_else(|e| e.into_inner());
        if tails.contains_key(&run_id) {
            return None;
        }
        let (tx, rx) = watch::channel(false);
        tails.insert(run_id, tx);
        Some(rx)
    }

    /// Captures running: memtest86+ stages, and Linux console tails.
    pub fn counts(&self) -> (usize, usize) {
        let memtest = self.lock().len();
        let tails = self.tails.lock().unwrap_or_else(|e| e.into_inner()).len();
        (memtest, tails)
    }

    /// A bandwidth stream of `run_id`'s agent: the receiver turns `true` when the run's Linux
    /// stage ends (the run closes).
    pub fn stream(&self, run_id: i64) -> watch::Receiver<bool> {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        streams
            .entry(run_id)
            .or_insert_with(|| watch::channel(false).0)
            .subscribe()
    }

    /// Stops the captures of the stages `ended` lists, and the streams of the runs it closed.
    pub fn stop(&self, ended: &Ended) {
        for (run_id, stage) in &ended.0 {
            // The Linux stage's streams and console tail end with the run: with its power
            // cycles when it has them (the Linux stage is not reported ended then).
            let last = matches!(stage, Stage::Linux | Stage::Cycles);
            if last {
                let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(tx) = streams.remove(run_id) {
                    let _ = tx.send(true);
                }
            }
            if last {
                let mut tails = self.tails.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(tx) = tails.remove(run_id) {
                    let _ = tx.send(true);
                }
            }
            if *stage == Stage::Memtest {
                if let Some(tx) = self.lock().remove(run_id) {
                    tracing::info!(run_id, "memtest stage ended: its console capture stops");
                    let _ = tx.send(true);
                }
            }
        }
    }

    /// Notes that `run_id`'s console (node `node_id`'s) is read under the lease `epoch`.
    pub fn lease(&self, run_id: i64, node_id: i64, epoch: i64) {
        self.leases().insert(run_id, (node_id, epoch));
    }

    /// Forgets `run_id`'s lease; gives its node and epoch when there was one.
    pub fn unlease(&self, run_id: i64) -> Option<(i64, i64)> {
        self.leases().remove(&run_id)
    }

    /// Every run read under a lease: (run, node, epoch).
    pub fn leased(&self) -> Vec<(i64, i64, i64)> {
        self.leases()
            .iter()
            .map(|(run, (node, epoch))| (*run, *node, *epoch))
            .collect()
    }

    /// Stops whatever reads `run_id`'s console (its memtest capture, its console tail):
    /// the lease it was read under is gone.
    pub fn drop_run(&self, run_id: i64) {
        if let Some(tx) = self.lock().remove(&run_id) {
            let _ = tx.send(true);
        }
        let mut tails = self.tails.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = tails.remove(&run_id) {
            let _ = tx.send(true);
        }
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<i64, (i64, i64)>> {
        self.leased.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The capture of `run_id` ended by itself.
    pub fn finished(&self, run_id: i64) {
        self.lock().remove(&run_id);
    }

    /// How many captures run.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, watch::Sender<bool>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ended_memtest_stage_stops_its_capture_and_nothing_else() {
        let captures = Captures::default();
        let one = captures.register(1);
        let two = captures.register(2);
        captures.stop(&Ended(vec![(1, Stage::Linux)]));
        assert!(!*one.borrow());
        captures.stop(&Ended(vec![(1, Stage::Memtest)]));
        assert!(*one.borrow());
        assert!(!*two.borrow());
        assert_eq!(captures.len(), 1);
        // A second registration for a run stops the first.
        let again = captures.register(2);
        assert!(*two.borrow());
        assert!(!*again.borrow());
        // A console tail ends with its run's Linux stage, not its memtest stage.
        let tail = captures.register_tail(3);
        captures.stop(&Ended(vec![(3, Stage::Memtest)]));
        assert!(!*tail.borrow());
        captures.stop(&Ended(vec![(3, Stage::Linux)]));
        assert!(*tail.borrow());
    }
}
