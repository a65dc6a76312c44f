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

/// A request whose payload carries a secret: what an incident's dropped packet may hold.
const SECRET: &str = "droptrace-test-secret-6b1f0c2e";

fn secret_request() -> Vec<u8> {
    let mut body = format!("POST /login HTTP/1.1\r\nHost: registry\r\nX-Token: {SECRET}\r\n\r\n");
    while body.len() < 200 {
        body.push('x');
    }
    body.into_bytes()
}

/// The lab with Docker's path healthy for the handshake and a DOCKER-USER rule that drops
/// every data packet to the port: the request (in page fragments, as TCP sends it) dies in
/// FORWARD.
fn data_drop_lab(label: &str) -> Lab {
    require_root();
    let lab = Lab::up(LabSpec::new(label)).unwrap_or_else(|e| panic!("lab: {e}"));
    lab.iptables(&common::words(
        "-I DOCKER-USER -p tcp --dport 5000 -m length --length 100:65535 -j DROP",
    ))
    .unwrap();
    lab
}

/// Connects from the client, sends `payload`, and waits for the retransmissions to be
/// dropped too (bounded).
fn send_from_client(lab: &Lab, payload: Vec<u8>) {
    use std::io::Write;
    let ns = tracer::discover::netns::Netns::resolve(&lab.ext).unwrap();
    ns.run_in(move || {
        let target = std::net::SocketAddr::from((tracer::lab::HOST_ADDR, 5000));
        let mut s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(3))
            .expect("the handshake passes the length rule");
        s.write_all(&payload).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
    })
    .unwrap();
}

/// (captured length, length on the wire, IP header length, TCP header length, payload hex).
type Captured = (usize, usize, usize, usize, String);

/// Every dropped request in the pcapng, as its blocks say: (captured length, length on the
/// wire, IP header length, TCP header length, the captured TCP payload in hex). Read with
/// pcap-file, so it runs in the matrix guests too, and checked against tshark's own reading
/// wherever tshark is installed (scripts/test.sh installs it; the guests have none).
fn packets(file: &std::path::Path) -> Vec<Captured> {
    use pcap_file::pcapng::{Block, PcapNgReader};
    let mut reader = PcapNgReader::new(std::fs::File::open(file).unwrap()).expect("a pcapng");
    let mut got = Vec::new();
    while let Some(block) = reader.next_block() {
        let Block::EnhancedPacket(epb) = block.expect("a readable block") else {
            continue;
        };
        let data = &epb.data;
        let ip = usize::from(data[0] & 0x0f) * 4;
        let tcp = usize::from(data[ip + 12] >> 4) * 4;
        let total = usize::from(u16::from_be_bytes([data[2], data[3]]));
        // Only the dropped request: the rule drops data packets of 200 payload bytes.
        if total != ip + tcp + 200 {
            continue;
        }
        let payload = data.get(ip + tcp..).unwrap_or_default();
        got.push((data.len(), epb.original_len as usize, ip, tcp, hex(payload)));
    }
    assert_eq!(
        got,
        tshark_packets(file).unwrap_or_else(|| got.clone()),
        "tshark reads it the same"
    );
    got
}

/// tshark's reading of the same packets, None where tshark is not installed in a matrix guest
/// (DROPTRACE_BIN set); on the build machine it must be there.
fn tshark_packets(file: &std::path::Path) -> Option<Vec<Captured>> {
    let out = std::process::Command::new("tshark")
        .args(["-r", file.to_str().unwrap(), "-T", "fields"])
        .args(["-e", "frame.cap_len", "-e", "frame.len", "-e", "ip.hdr_len"])
        .args(["-e", "tcp.hdr_len", "-e", "tcp.payload", "-e", "tcp.len"])
        .output();
    let out = match out {
        Err(_) if std::env::var_os("DROPTRACE_BIN").is_some() => return None,
        other => other.expect("tshark (scripts/test.sh installs it)"),
    };
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let rows = text
        .lines()
        .filter(|l| l.split('\t').nth(5).is_some_and(|n| n == "200"))
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let n = |i: usize| f[i].parse::<usize>().unwrap_or_else(|_| panic!("{l}"));
            (n(0), n(1), n(2), n(3), f[4].replace(':', ""))
        })
        .collect();
    Some(rows)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in walk(dir) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        if bytes.windows(needle.len()).any(|w| w == needle) {
            found.push(entry.display().to_string());
        }
    }
    found
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn by_default_the_pcap_and_bundle_hold_headers_only_and_no_payload_byte() {
    let lab = data_drop_lab("nopayload");
    let dir = std::env::temp_dir().join(format!("droptrace-nopayload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pcap = dir.with_extension("pcapng");
    let (bundle, file) = (dir.to_str().unwrap(), pcap.to_str().unwrap());
    let capture = ["--evidence", bundle, "--pcap", file];
    let watch = Watch::start(&[&["--port", "5000", "--netns", &lab.host][..], &capture].concat());
    send_from_client(&lab, secret_request());
    let out = watch.stop();
    assert!(out.status.success(), "{}", out.dump());
    let note = out.of_type("start")[0]["notes"].to_string();
    assert!(
        note.contains("headers only"),
        "the start line says what is kept: {note}"
    );
    for file in [pcap.clone(), dir.join("drops.pcapng")] {
        let got = packets(&file);
        assert!(
            !got.is_empty(),
            "the request's drops are in {}: {}",
            file.display(),
            out.dump()
        );
        for (cap, wire, ip, tcp, payload) in got {
            assert_eq!(cap, ip + tcp, "captured through the TCP header, no further");
            assert_eq!(wire, ip + tcp + 200, "the original length is the packet's");
            assert!(payload.is_empty(), "no payload byte: {payload}");
        }
    }
    let mut leaks = files_containing(&dir, SECRET.as_bytes());
    if out.dump().contains(SECRET) {
        leaks.push("droptrace's output".to_string());
    }
    if std::fs::read(&pcap)
        .unwrap()
        .windows(SECRET.len())
        .any(|w| w == SECRET.as_bytes())
    {
        leaks.push(pcap.display().to_string());
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&pcap);
    assert!(leaks.is_empty(), "the secret reached: {leaks:?}");
}

#[test]
fn snaplen_keeps_the_payload_byte_for_byte_from_page_fragments() {
    let lab = data_drop_lab("snaplen");
    let dir = std::env::temp_dir().join(format!("droptrace-snaplen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bundle = dir.to_str().unwrap();
    let watch = Watch::start(
        &[
            &["--port", "5000", "--netns", &lab.host][..],
            &["--evidence", bundle, "--snaplen", "1024"],
        ]
        .concat(),
    );
    let request = secret_request();
    send_from_client(&lab, request.clone());
    let out = watch.stop();
    assert!(out.status.success(), "{}", out.dump());
    let note = out.of_type("start")[0]["notes"].to_string();
    assert!(note.contains("payload included"), "{note}");
    let got = packets(&dir.join("drops.pcapng"));
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!got.is_empty(), "{}", out.dump());
    for (cap, wire, ip, tcp, payload) in got {
        assert_eq!(cap, wire, "the whole packet was kept");
        assert_eq!(wire, ip + tcp + request.len());
        assert_eq!(payload, hex(&request), "every payload byte is the one sent");
    }
    assert!(
        report.contains("payload included"),
        "the report says so:\n{report}"
    );
}
