//! `/live`, `/ready` and `/metrics` over a deliberately tiny HTTP/1.1 responder: probes and
//! scrapers send one GET per connection, and the operator links no web framework for them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// What the responder reports.
#[derive(Debug, Default)]
pub struct Health {
    /// The controller runs (this replica leads) or waits as a healthy candidate.
    pub ready: AtomicBool,
}

fn route(path: &str, health: &Health, metrics: &Metrics) -> (&'static str, &'static str, String) {
    match path {
        "/live" => ("200 OK", "text/plain", "ok".into()),
        "/ready" if health.ready.load(Ordering::Relaxed) => {
            ("200 OK", "text/plain", "ready".into())
        }
        "/ready" => ("503 Service Unavailable", "text/plain", "not ready".into()),
        "/metrics" => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        _ => ("404 Not Found", "text/plain", "not found".into()),
    }
}

async fn answer(mut stream: TcpStream, health: Arc<Health>, metrics: Arc<Metrics>) {
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
        match stream.read(&mut buf[len..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => len += n,
        }
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut parts = head.split_whitespace();
    let (status, content_type, body) = match (parts.next(), parts.next()) {
        (Some("GET"), Some(path)) => {
            route(path.split('?').next().unwrap_or(path), &health, &metrics)
        }
        _ => ("405 Method Not Allowed", "text/plain", "GET only".into()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Serves until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "health and metrics listening");
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(answer(stream, health.clone(), metrics.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let (health, metrics) = (Health::default(), Metrics::new());
        assert_eq!(route("/live", &health, &metrics).0, "200 OK");
        assert_eq!(
            route("/ready", &health, &metrics).0,
            "503 Service Unavailable"
        );
        health.ready.store(true, Ordering::Relaxed);
        assert_eq!(route("/ready", &health, &metrics).0, "200 OK");
        assert!(
            route("/metrics", &health, &metrics)
                .2
                .contains("operator_reconciles_total")
        );
        assert_eq!(route("/x", &health, &metrics).0, "404 Not Found");
    }
}
