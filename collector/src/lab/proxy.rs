//! The lab's boot address when several collectors serve it: a TCP proxy that hands each
//! connection to the next collector in turn, and to the one after when that one does not
//! answer (it was killed), as a load balancer in front of a site's collectors would. Every
//! collector answers any request (they share the database), so which one a connection
//! reaches does not matter — only that a live one does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long a collector has to accept a connection before the next one is tried.
const CONNECT: Duration = Duration::from_secs(1);

/// Serves `listener` until the runtime stops, forwarding to `backends`.
pub(super) async fn serve(listener: tokio::net::TcpListener, backends: Vec<SocketAddr>) {
    let next = Arc::new(AtomicUsize::new(0));
    let backends = Arc::new(backends);
    while let Ok((mut inbound, _)) = listener.accept().await {
        let (next, backends) = (next.clone(), backends.clone());
        tokio::spawn(async move {
            let first = next.fetch_add(1, Ordering::Relaxed);
            for k in 0..backends.len() {
                let to = backends[(first + k) % backends.len()];
                let Ok(Ok(mut outbound)) =
                    tokio::time::timeout(CONNECT, tokio::net::TcpStream::connect(to)).await
                else {
                    continue;
                };
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                return;
            }
            tracing::warn!("kiln lab: no collector took a connection");
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend that answers each connection with its name.
    async fn named(name: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let _ = s.write_all(name.as_bytes()).await;
            }
        });
        (addr, task)
    }

    async fn ask(addr: SocketAddr) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn connections_take_turns_and_skip_a_collector_that_is_gone() {
        let (a, _a) = named("a").await;
        let (b, b_task) = named("b").await;
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap();
        tokio::spawn(serve(front, vec![a, b]));
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(ask(addr).await);
        }
        assert_eq!(seen, ["a", "b", "a", "b"]);
        // b dies: every connection reaches a.
        b_task.abort();
        let _ = b_task.await;
        for _ in 0..3 {
            assert_eq!(ask(addr).await, "a");
        }
    }
}
