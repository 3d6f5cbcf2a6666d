//! The load bench's simulated agent: what `kiln-agent` does on the wire to post its batches,
//! and no more.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// One simulated agent's connection to the collector: HTTP/1.1 kept alive, as `kiln-agent`
/// holds one, opened again after an error (the collector killed and restarted). hyper's
/// connection directly rather than reqwest's pooled client: the agents' side of this bench
/// shares the collector's two CPUs, and a pool checkout, URL parse and header map per request
/// for 10,000 agents would take CPU that real agents spend on machines of their own.
pub struct Agent {
    /// The run it posts for.
    pub run_id: i64,
    /// Every collector's address, as `kiln.url=` lists them; the agent goes on with the next
    /// after a failure, as `kiln-agent` does.
    addrs: Arc<[SocketAddr]>,
    /// The one it posts to now.
    at: usize,
    path: String,
    authorization: hyper::header::HeaderValue,
    conn: Option<hyper::client::conn::http1::SendRequest<axum::body::Body>>,
}

impl Agent {
    /// An agent of run `run_id` posting to `addrs[first]` first.
    pub fn new(addrs: Arc<[SocketAddr]>, first: usize, run_id: i64, token: &str) -> Agent {
        Agent {
            run_id,
            addrs,
            at: first,
            path: format!("/api/v1/runs/{run_id}/events"),
            authorization: format!("Bearer {token}").parse().expect("token header"),
            conn: None,
        }
    }

    /// Posts one encoded batch; the acknowledgement, or `None` on any failure (connection
    /// dropped, refused, an answer that is not an ack) — the caller backs off and resends.
    pub async fn post(&mut self, body: bytes::Bytes) -> Option<kiln_protocol::wire::BatchAck> {
        let answer = self.try_post(body).await;
        if answer.is_none() {
            self.conn = None;
            self.at = (self.at + 1) % self.addrs.len();
        }
        answer
    }

    /// Opens the connection to the collector it posts to, unless one is open; whether one is.
    pub async fn connect(&mut self) -> bool {
        if self.conn.as_ref().is_none_or(|c| c.is_closed()) {
            self.conn = self.open().await;
        }
        self.conn.is_some()
    }

    async fn open(&self) -> Option<hyper::client::conn::http1::SendRequest<axum::body::Body>> {
        let stream = tokio::net::TcpStream::connect(self.addrs[self.at])
            .await
            .ok()?;
        stream.set_nodelay(true).ok()?;
        let (send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .ok()?;
        tokio::spawn(conn);
        Some(send)
    }

    async fn try_post(&mut self, body: bytes::Bytes) -> Option<kiln_protocol::wire::BatchAck> {
        use hyper::header;
        if !self.connect().await {
            return None;
        }
        let conn = self.conn.as_mut()?;
        conn.ready().await.ok()?;
        let request = hyper::Request::post(self.path.as_str())
            .header(header::HOST, "127.0.0.1")
            .header(header::AUTHORIZATION, self.authorization.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len())
            .body(axum::body::Body::from(body))
            .ok()?;
        let response = tokio::time::timeout(Duration::from_secs(60), conn.send_request(request))
            .await
            .ok()?
            .ok()?;
        let ok = response.status().is_success();
        let bytes = axum::body::to_bytes(axum::body::Body::new(response.into_body()), 1 << 16)
            .await
            .ok()?;
        ok.then(|| serde_json::from_slice(&bytes).ok()).flatten()
    }
}
