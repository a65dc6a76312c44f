//! Evidence to hand over: pcapng of the dropped packets (read back with tshark) and the
//! evidence bundle (private files, snapshots, a report renderable without root).
mod common;

use std::{os::unix::fs::PermissionsExt, time::Duration};

use common::{Watch, require_root, run_droptrace};
use tracer::lab::{Lab, LabSpec, Outcome};

fn forwarding_off_lab(label: &str) -> Lab {
    require_root();
    let lab = Lab::up(LabSpec::new(label)).unwrap_or_else(|e| panic!("lab: {e}"));
    lab.sysctl(&lab.host, "net.ipv4.ip_forward", "0").unwrap();
    lab
}

#[test]
fn pcap_holds_the_dropped_headers_with_their_reason() {
    let lab = forwarding_off_lab("pcap");
    let file = std::env::temp_dir().join(format!("droptrace-test-{}.pcapng", std::process::id()));
    let watch = Watch::start(&[
        "--port",
        "5000",
        "--netns",
        &lab.host,
        "--pcap",
        file.to_str().unwrap(),
    ]);
    assert_eq!(lab.client_request(Duration::from_secs(2)), Outcome::Timeout);
    let out = watch.stop();
    let drops = out.drops().len();
    assert!(drops > 0, "{}", out.dump());
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "pcap must be private: {mode:o}");
    let tshark = std::process::Command::new("tshark")
        .args([
            "-r",
            file.to_str().unwrap(),
            "-T",
            "fields",
            "-e",
            "frame.interface_name",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "tcp.dstport",
            "-e",
            "tcp.flags.syn",
            "-e",
            "frame.comment",
        ])
        .output()
        .expect("tshark (apt-get install tshark)");
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&tshark.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), drops, "one packet per drop line:\n{text}");
    for l in lines {
        let f: Vec<&str> = l.split('\t').collect();
        assert_eq!(
            &f[..4],
            ["eth-ext", "198.51.100.2", "172.17.0.2", "5000"],
            "{l}"
        );
        assert!(f[4] == "1" || f[4] == "True", "a SYN: {l}");
        assert!(
            f[5].contains("reason=IP_INADDRERRORS") && f[5].contains("cause=forwarding_disabled"),
            "{l}"
        );
    }
}

#[test]
fn evidence_bundle_is_private_complete_and_reports_without_root() {
    let lab = forwarding_off_lab("bundle");
    let dir = std::env::temp_dir().join(format!("droptrace-evidence-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let watch = Watch::start(&[
        "--port",
        "5000",
        "--netns",
        &lab.host,
        "--evidence",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(lab.client_request(Duration::from_secs(2)), Outcome::Timeout);
    let out = watch.stop();
    assert!(out.status.success(), "{}", out.dump());
    for name in [
        "events.jsonl",
        "verdicts.json",
        "drops.pcapng",
        "report.md",
        "snapshot-start/iptables-nft-save.txt",
        "snapshot-start/sysctl-net.txt",
        "snapshot-start/nft-ruleset.json",
        "snapshot-first-verdict/ip-route.json",
        "snapshot-first-verdict/conntrack-port-5000.txt",
    ] {
        let meta = std::fs::metadata(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(meta.permissions().mode() & 0o077, 0, "{name} must be 0600");
    }
    let events = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    assert!(events.contains("\"type\":\"verdict\"") && events.contains("\"type\":\"summary\""));
    let saved = std::fs::read_to_string(dir.join("snapshot-start/iptables-nft-save.txt")).unwrap();
    assert!(
        saved.contains("-j DNAT --to-destination 172.17.0.2:5000"),
        "{saved}"
    );
    let sysctl = std::fs::read_to_string(dir.join("snapshot-start/sysctl-net.txt")).unwrap();
    assert!(sysctl.contains("net.ipv4.ip_forward = 0"), "{sysctl}");

    // `report` needs no privilege: run it with every capability dropped.
    let report = std::process::Command::new("setpriv")
        .args([
            "--inh-caps=-all",
            "--bounding-set=-all",
            common::DROPTRACE.as_str(),
            "report",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(
        report.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&report.stderr)
    );
    assert!(
        text.contains("### port 5000/tcp: forwarding_disabled"),
        "{text}"
    );
    assert!(text.contains("sysctl -w net.ipv4.ip_forward=1"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unwritable_evidence_directory_and_non_bundles_are_clear_errors() {
    require_root();
    let out = run_droptrace(&[
        "watch",
        "--port",
        "5000",
        "--duration",
        "0.2",
        "--evidence",
        "/proc/droptrace-bundle",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("cannot write /proc/droptrace-bundle"), "{err}");
    let out = run_droptrace(&["report", "/etc"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not a droptrace evidence bundle"), "{err}");
}

#[test]
fn metrics_are_valid_exposition_with_exact_counts() {
    let lab = forwarding_off_lab("metrics");
    // Loopback of the test's own namespace, a port unlikely to be taken.
    let addr = format!("127.0.0.1:{}", 19_000 + std::process::id() % 1000);
    let watch = Watch::start(&["--port", "5000", "--netns", &lab.host, "--metrics", &addr]);
    assert_eq!(lab.client_request(Duration::from_secs(2)), Outcome::Timeout);
    std::thread::sleep(Duration::from_millis(1300)); // one refresh of the kernel counters
    let response = common::scrape(&addr, "/metrics");
    assert!(common::scrape(&addr, "/other").starts_with("HTTP/1.1 404"));

    // The address is taken now: a second droptrace says so.
    let taken = run_droptrace(&[
        "watch",
        "--port",
        "5000",
        "--duration",
        "0.2",
        "--metrics",
        &addr,
    ]);
    let err = String::from_utf8_lossy(&taken.stderr);
    assert_eq!(taken.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!("cannot serve metrics on {addr}")),
        "{err}"
    );

    let out = watch.stop();
    let drops = out.summary()["drops"].as_u64().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let line = format!(
        "droptrace_drops_total{{cause=\"forwarding_disabled\",reason=\"{}\",port=\"5000\",proto=\"tcp\"}} {drops}",
        common::counted_as("IP_INADDRERRORS")
    );
    assert!(body.contains(&line), "expected `{line}` in:\n{body}");
    assert!(
        !body.contains("198.51.100"),
        "no client addresses in labels"
    );

    // promtool (Debian's prometheus package) validates the exposition.
    let mut check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .output_with_stdin(body);
    assert!(
        check.0,
        "promtool rejected the metrics: {}\n{body}",
        check.1
    );
    check.1.clear();
}

trait WithStdin {
    fn output_with_stdin(&mut self, input: &str) -> (bool, String);
}

impl WithStdin for std::process::Command {
    fn output_with_stdin(&mut self, input: &str) -> (bool, String) {
        use std::io::Write;
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool (apt-get install prometheus)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}
