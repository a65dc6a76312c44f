//! A real Prometheus (Debian's package) scrapes droptrace's `--metrics` while the lab drops
//! packets: PromQL over its HTTP API returns the exact drop count for the right cause and
//! port, and deploy/alerts.yaml's verdict and lost-events alerts fire.
mod common;

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Watch, require_root};
use serde_json::Value;
use tracer::lab::{Lab, LabSpec, Outcome};

const ALERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/alerts.yaml");

/// A Prometheus server on loopback with its own configuration and storage, removed on drop.
struct Prometheus {
    child: Child,
    dir: std::path::PathBuf,
    api: String,
}

impl Prometheus {
    fn start(targets: &[&str], listen: &str) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("droptrace-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 rule_files: [{ALERTS:?}]\n\
                 scrape_configs:\n  - job_name: droptrace\n    static_configs: [{{targets: {targets:?}}}]\n"
            ),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (apt-get install prometheus)");
        Prometheus {
            child,
            dir,
            api: format!("http://{listen}/api/v1/query"),
        }
    }

    /// The result vector of an instant PromQL query (empty while Prometheus is not up yet).
    fn query(&self, promql: &str) -> Vec<Value> {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "3", &self.api, "--data-urlencode"])
            .arg(format!("query={promql}"))
            .output()
            .expect("curl");
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v["data"]["result"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Polls `promql` (bounded) until `done` accepts its result; the last result.
    fn wait_for(&self, promql: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let result = self.query(promql);
            if done(&result) || Instant::now() > deadline {
                return result;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of the one sample in a query result.
fn value(result: &[Value]) -> Option<u64> {
    result.first()?["value"][1].as_str()?.parse().ok()
}

#[test]
fn alert_rules_are_valid_prometheus_rules() {
    let out = Command::new("promtool")
        .args(["check", "rules", ALERTS])
        .output()
        .expect("promtool (apt-get install prometheus)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("SUCCESS: 3 rules found"), "{text}");
}

#[test]
fn a_real_prometheus_scrapes_the_exact_drops_and_the_alerts_fire() {
    require_root();
    let lab: Lab = Lab::up(LabSpec::new("prom")).unwrap_or_else(|e| panic!("lab: {e}"));
    lab.sysctl(&lab.host, "net.ipv4.ip_forward", "0").unwrap();
    let pid = std::process::id() % 1000;
    let metrics = format!("127.0.0.1:{}", 20_000 + pid);
    // A second droptrace, one line per drop through a 4 KiB ring: a burst overflows it.
    let small_ring = format!("127.0.0.1:{}", 22_000 + pid);
    let listen = format!("127.0.0.1:{}", 21_000 + pid);
    let prometheus = Prometheus::start(&[&metrics, &small_ring], &listen);
    let watch = Watch::start(&[
        "--port",
        "5000",
        "--netns",
        &lab.host,
        "--metrics",
        &metrics,
    ]);
    let lossy = Watch::start(&[
        "--port",
        "5001",
        "--netns",
        &lab.host,
        "--metrics",
        &small_ring,
        "--every-drop",
        "--ring-bytes",
        "4096",
    ]);
    assert_eq!(lab.client_request(Duration::from_secs(2)), Outcome::Timeout);
    // The loss must come after a first scrape, or increase() has nothing to compare with.
    let up = format!(r#"up{{instance="{small_ring}"}} == 1"#);
    assert!(
        !prometheus.wait_for(&up, |r| !r.is_empty()).is_empty(),
        "never scraped"
    );
    common::udp_burst(&lab, 3000);

    let drops = r#"droptrace_drops_total{job="droptrace",cause="forwarding_disabled",port="5000",proto="tcp"}"#;
    // Once the client gave up, droptrace's count and Prometheus's latest scrape agree.
    let direct = || -> Option<u64> {
        let body = common::scrape(&metrics, "/metrics");
        body.lines()
            .find(|l| l.starts_with("droptrace_drops_total{cause=\"forwarding_disabled\""))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    let scraped = prometheus.wait_for(drops, |r| value(r).is_some_and(|v| Some(v) == direct()));
    let scraped_value = value(&scraped);
    let firing = |alert: &str| {
        let q = format!(r#"ALERTS{{alertname="{alert}",alertstate="firing"}}"#);
        prometheus.wait_for(&q, |r| !r.is_empty())
    };
    let (verdict, lost) = (firing("DroptraceVerdict"), firing("DroptraceEventsLost"));
    let out = watch.stop();
    let lossy_out = lossy.stop();
    drop(prometheus);

    let exact = out.summary()["drops"].as_u64().unwrap();
    assert!(exact > 0, "{}", out.dump());
    assert_eq!(scraped_value, Some(exact), "PromQL {drops} → {scraped:?}");
    assert_eq!(
        scraped[0]["metric"]["reason"],
        common::counted_as("IP_INADDRERRORS"),
        "{scraped:?}"
    );
    let verdicts: Vec<&Value> = verdict.iter().map(|a| &a["metric"]).collect();
    let alert = verdicts
        .iter()
        .find(|a| a["cause"] == "forwarding_disabled")
        .unwrap_or_else(|| panic!("no verdict alert for the forwarding: {verdicts:?}"));
    assert_eq!(alert["port"], "5000", "{alert}");
    assert_eq!(alert["severity"], "page", "{alert}");
    assert!(
        lossy_out.summary()["lost"].as_u64().unwrap() > 0,
        "{}",
        lossy_out.dump()
    );
    assert_eq!(lost.len(), 1, "the lost-events alert: {lost:?}");
    assert_eq!(
        lost[0]["metric"]["instance"],
        small_ring.as_str(),
        "{lost:?}"
    );
}
