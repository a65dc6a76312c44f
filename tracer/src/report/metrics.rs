//! `--metrics ADDR`: Prometheus text exposition on `/metrics`, for the monitoring a fleet
//! already has. Low-cardinality labels only (cause, reason, port, proto, source: never a
//! client address). Drop counts are the kernel's exact per-CPU counters, refreshed about once
//! a second by the watch loop; the HTTP side only serves the latest snapshot.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::error::Error;

/// What the exporter shows, replaced wholesale on each refresh.
#[derive(Clone, Debug, Default)]
pub struct MetricsSnapshot {
    /// (port, proto, packets forwarded to the container)
    pub forwarded: Vec<(u16, String, u64)>,
    /// (cause or "unattributed", reason, port, proto, packets)
    pub drops: Vec<(String, String, u16, String, u64)>,
    /// (cause, port): verdicts currently open.
    pub verdicts: Vec<(String, u16)>,
    /// (source, count) of changes seen.
    pub changes: Vec<(String, u64)>,
    pub events: u64,
    pub lost: u64,
    pub read_errors: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Exporter(Arc<Mutex<MetricsSnapshot>>);

/// A label value in the text format: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

impl Exporter {
    pub fn update(&self, snapshot: MetricsSnapshot) {
        if let Ok(mut s) = self.0.lock() {
            *s = snapshot;
        }
    }

    /// The Prometheus text exposition (format 0.0.4) of the current snapshot.
    pub fn render(&self) -> String {
        let s = self.0.lock().map(|s| s.clone()).unwrap_or_default();
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, value) in samples {
                out.push_str(&format!("{name}{labels} {value}\n"));
            }
        };
        family(
            "droptrace_drops_total",
            "counter",
            "Watched packets the kernel dropped (exact in-kernel counters), by cause, drop reason and watched port",
            s.drops
                .iter()
                .map(|(cause, reason, port, proto, n)| {
                    let port = port.to_string();
                    (
                        labels(&[
                            ("cause", cause),
                            ("reason", reason),
                            ("port", &port),
                            ("proto", proto),
                        ]),
                        n.to_string(),
                    )
                })
                .collect(),
        );
        family(
            "droptrace_forwarded_total",
            "counter",
            "Packets the kernel forwarded to a watched port (exact in-kernel counters)",
            s.forwarded
                .iter()
                .map(|(port, proto, n)| {
                    let port = port.to_string();
                    (labels(&[("port", &port), ("proto", proto)]), n.to_string())
                })
                .collect(),
        );
        family(
            "droptrace_verdicts",
            "gauge",
            "Open verdicts: 1 per (cause, port) attributed during this run",
            s.verdicts
                .iter()
                .map(|(cause, port)| {
                    (
                        labels(&[("cause", cause), ("port", &port.to_string())]),
                        "1".into(),
                    )
                })
                .collect(),
        );
        family(
            "droptrace_changes_total",
            "counter",
            "Changes to forwarding sysctls or the firewall ruleset seen, by source",
            s.changes
                .iter()
                .map(|(source, n)| (labels(&[("source", source)]), n.to_string()))
                .collect(),
        );
        for (name, help, value) in [
            (
                "droptrace_events_total",
                "Drop events delivered to userspace",
                s.events,
            ),
            (
                "droptrace_events_lost_total",
                "Drop events the ring buffer could not take (their drops are still counted)",
                s.lost,
            ),
            (
                "droptrace_read_errors_total",
                "Kernel reads of packet headers that failed",
                s.read_errors,
            ),
        ] {
            family(
                name,
                "counter",
                help,
                vec![(String::new(), value.to_string())],
            );
        }
        out
    }
}

/// Binds the metrics address (a clear error when it is taken).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::MetricsBind {
            addr: addr.to_string(),
            why: e.to_string(),
        })
}

/// Serves `GET /metrics` (and 404 for anything else) until the task is dropped. Requests
/// are small and bounded in size and time; a misbehaving client cannot stall the watch.
pub async fn serve(listener: TcpListener, exporter: Exporter) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let exporter = exporter.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            let mut got = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while got < buf.len() {
                    match stream.read(&mut buf[got..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    }
                    if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let request = String::from_utf8_lossy(&buf[..got]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let (status, ctype, body) =
                if request.starts_with("GET ") && path.starts_with("/metrics") {
                    (
                        "200 OK",
                        "text/plain; version=0.0.4; charset=utf-8",
                        exporter.render(),
                    )
                } else {
                    (
                        "404 Not Found",
                        "text/plain",
                        "droptrace serves /metrics\n".to_string(),
                    )
                };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_low_cardinality_labels_and_exact_values() {
        let e = Exporter::default();
        e.update(MetricsSnapshot {
            forwarded: vec![(5000, "tcp".into(), 7)],
            drops: vec![(
                "forwarding_disabled".into(),
                "IP_INADDRERRORS".into(),
                5000,
                "tcp".into(),
                42,
            )],
            verdicts: vec![("forwarding_disabled".into(), 5000)],
            changes: vec![("sysctl".into(), 1)],
            events: 40,
            lost: 2,
            read_errors: 0,
        });
        let text = e.render();
        assert!(
            text.contains("droptrace_drops_total{cause=\"forwarding_disabled\",reason=\"IP_INADDRERRORS\",port=\"5000\",proto=\"tcp\"} 42"),
            "{text}"
        );
        assert!(text.contains("droptrace_events_lost_total 2"), "{text}");
        assert!(
            text.contains("droptrace_forwarded_total{port=\"5000\",proto=\"tcp\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("droptrace_verdicts{cause=\"forwarding_disabled\",port=\"5000\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE droptrace_drops_total counter"),
            "{text}"
        );
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
