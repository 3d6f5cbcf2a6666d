//! Page sessions: `/login` checks the read (or admin) token once and hands the browser a
//! random session id in a cookie — never the token itself, which a cookie would keep on disk
//! and send with every request. A session expires; `/logout` ends it; the table is bounded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a page session lasts.
pub const SESSION: Duration = Duration::from_secs(12 * 3600);

/// Sessions remembered at most: past it, the one that ends soonest goes.
const MAX_SESSIONS: usize = 4096;

/// The cookie's name.
pub const COOKIE: &str = "kiln_session";

/// Open sessions by the hash of their id, with when each ends.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Instant>>,
}

impl Sessions {
    /// Opens a session; returns its id (only its hash is kept).
    pub fn open(&self) -> anyhow::Result<String> {
        self.open_at(Instant::now())
    }

    fn open_at(&self, now: Instant) -> anyhow::Result<String> {
        let id = crate::tokens::mint()?;
        let mut open = self.lock();
        open.retain(|_, ends| *ends > now);
        if open.len() >= MAX_SESSIONS {
            if let Some(soonest) = open
                .iter()
                .min_by_key(|(_, ends)| **ends)
                .map(|(h, _)| h.clone())
            {
                open.remove(&soonest);
            }
        }
        open.insert(crate::tokens::hash(&id), now + SESSION);
        Ok(id)
    }

    /// Whether `id` is an open session now.
    pub fn valid(&self, id: &str) -> bool {
        self.valid_at(id, Instant::now())
    }

    fn valid_at(&self, id: &str, now: Instant) -> bool {
        self.lock()
            .get(&crate::tokens::hash(id))
            .is_some_and(|ends| *ends > now)
    }

    /// Ends session `id` (nothing when there is none).
    pub fn close(&self, id: &str) {
        self.lock().remove(&crate::tokens::hash(id));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The session id in a request's cookies, if any.
pub fn cookie(headers: &axum::http::HeaderMap) -> Option<&str> {
    let prefix = format!("{COOKIE}=");
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(prefix.as_str()))
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_holds_until_it_expires_or_is_closed_and_the_table_is_bounded() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let id = sessions.open_at(now).unwrap();
        assert!(sessions.valid_at(&id, now + SESSION - Duration::from_secs(1)));
        assert!(!sessions.valid_at(&id, now + SESSION));
        assert!(!sessions.valid_at("forged", now));
        assert!(!sessions.valid_at("", now));
        sessions.close(&id);
        assert!(!sessions.valid_at(&id, now));
        for i in 0..(MAX_SESSIONS + 10) {
            let _ = sessions
                .open_at(now + Duration::from_millis(i as u64))
                .unwrap();
        }
        assert!(sessions.lock().len() <= MAX_SESSIONS);
    }

    #[test]
    fn the_session_cookie_is_found_among_others_and_an_empty_one_is_none() {
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            "a=1; kiln_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h), Some("abc"));
        h.insert(
            axum::http::header::COOKIE,
            "kiln_session=; kiln_read=tok".parse().unwrap(),
        );
        assert_eq!(cookie(&h), None);
    }
}
