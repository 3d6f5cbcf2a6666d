//! What peer-assisted boot keeps between requests: the tracker, the manifest of the payload
//! it tracks (with the file version it was made from) and where each serving node's agent
//! listens. Beneath the handlers that use it (`payload`) and the state that holds it.

use std::sync::{Arc, Mutex};

use kiln_protocol::payload::Manifest;

use crate::tracker::{self, Tracker};

/// The tracker, the manifest it serves and where each serving node's agent listens.
#[derive(Default)]
pub struct Swarms {
    inner: Mutex<Inner>,
    /// The collector's payload traffic, when `payload_mbps` caps it.
    pub(super) up: Option<Arc<kiln_agent::payload::Bucket>>,
}

impl Swarms {
    /// Swarms whose collector sends at most `mbps` of payload, when set.
    pub fn new(mbps: Option<f64>) -> Swarms {
        Swarms {
            inner: Mutex::default(),
            up: mbps.map(kiln_agent::payload::Bucket::mbps),
        }
    }
}

#[derive(Default)]
pub(super) struct Inner {
    pub(super) tracker: Option<Tracker>,
    pub(super) manifest: Option<(Stamp, Arc<Manifest>)>,
    pub(super) addrs: std::collections::HashMap<tracker::NodeId, String>,
}

/// What identifies one version of the payload file.
pub(super) type Stamp = (u64, std::time::SystemTime);

impl Swarms {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}
