//! Conntrack incidents, injected for real: the lab's host namespace with its conntrack table
//! filled to `nf_conntrack_max`, a real client whose SYNs conntrack refuses, and droptrace
//! naming `conntrack_full`, never a rule.
//!
//! `nf_conntrack_max` is one limit for the whole machine, writable only in the initial
//! namespace: the tests lower it to a little above the largest table droptrace's lab can see
//! (the root namespace's), restore it on every path (a guard, also on panic), and run one at a
//! time in this binary of their own.
mod common;

use std::{sync::Mutex, time::Duration};

use common::{Output, Watch, require_root};
use serde_json::Value;
use tracer::lab::{Lab, LabSpec, Outcome};

const MAX_PATH: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

/// One test at a time: they share the host-wide limit.
static HOST_LIMIT: Mutex<()> = Mutex::new(());

/// The lowered limit, restored when dropped.
struct LimitGuard {
    was: String,
}

impl LimitGuard {
    fn saved() -> LimitGuard {
        let was = std::fs::read_to_string(MAX_PATH)
            .expect("nf_conntrack loaded (the lab's DNAT loads it)");
        LimitGuard {
            was: was.trim().to_string(),
        }
    }

    fn lower_to(max: u64) -> LimitGuard {
        let guard = LimitGuard::saved();
        std::fs::write(MAX_PATH, max.to_string())
            .expect("write nf_conntrack_max in the initial namespace");
        guard
    }

    /// As a tuning script would: procps `sysctl -w` in the initial namespace.
    fn lower_with_sysctl(max: u64) -> LimitGuard {
        let guard = LimitGuard::saved();
        let set = format!("net.netfilter.nf_conntrack_max={max}");
        let out = std::process::Command::new("sysctl")
            .args(["-w", &set])
            .output()
            .expect("run sysctl");
        assert!(out.status.success(), "sysctl -w {set}: {out:?}");
        guard
    }
}

impl Drop for LimitGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(MAX_PATH, &self.was) {
            eprintln!(
                "could not restore nf_conntrack_max to {}: {e}; restore it by hand",
                self.was
            );
        }
    }
}

fn count_in_root() -> u64 {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .unwrap_or(0)
}

/// Fills the lab host's table with ASSURED entries (which the kernel never evicts to make
/// room) until conntrack refuses one: the table is then at the limit. Bounded by `max`.
fn fill_table(lab: &Lab, max: u64) {
    for i in 0..=max {
        let sport = (10000 + i).to_string();
        let r = lab.exec(
            &lab.host,
            &[
                "conntrack",
                "-I",
                "-p",
                "tcp",
                "-s",
                "203.0.113.7",
                "-d",
                "203.0.113.8",
                "--sport",
                &sport,
                "--dport",
                "443",
                "--state",
                "ESTABLISHED",
                "-u",
                "ASSURED",
                "-t",
                "600",
            ],
        );
        if r.is_err() {
            return;
        }
    }
    panic!("conntrack took {max} entries past a limit of {max}");
}

fn full_lab(label: &str) -> (Lab, LimitGuard) {
    require_root();
    let lab = Lab::up(LabSpec::new(label)).unwrap_or_else(|e| panic!("building the lab: {e}"));
    // Healthy first: the path works and loads conntrack.
    assert_eq!(
        lab.client_request(Duration::from_secs(3)),
        Outcome::Http(200)
    );
    // Only entries the kernel never evicts: the healthy request's TIME_WAIT entry could be
    // (the garbage collector drops such entries once the table is full, measured on 6.1).
    lab.exec(&lab.host, &["conntrack", "-F"])
        .expect("conntrack -F");
    let max = count_in_root() + 64;
    let guard = LimitGuard::lower_to(max);
    fill_table(&lab, max);
    (lab, guard)
}

#[test]
fn a_full_conntrack_table_is_named_and_no_rule_is_blamed() {
    let _one = HOST_LIMIT.lock().unwrap_or_else(|e| e.into_inner());
    let (lab, _limit) = full_lab("ctfull");
    let watch = Watch::start(&["--port", "5000", "--netns", &lab.host]);
    let seen = lab.client_request(Duration::from_secs(3));
    let out = watch.stop();
    assert_eq!(seen, Outcome::Timeout, "{}", out.dump());
    // The parser's fixture (testdata/conntrack-S-table-full.txt) is this output.
    common::save_fixture(
        "conntrack-S-table-full.txt",
        &lab.exec(&lab.host, &["conntrack", "-S"]).unwrap(),
    );
    let v = common::final_verdicts(&out);
    assert_eq!(v.len(), 1, "one verdict: {}", out.dump());
    let v = v[0];
    assert_eq!(v["cause"], "conntrack_full", "{v:#}");
    assert_eq!(v["proximate"]["hook"], "PRE_ROUTING", "{v:#}");
    assert_eq!(
        v["proximate"]["rule"],
        Value::Null,
        "no rule is blamed: {v:#}"
    );
    let evidence = v["evidence"].to_string();
    assert!(evidence.contains("nf_conntrack_count = "), "{evidence}");
    assert!(evidence.contains("conntrack -S: drop = "), "{evidence}");
    let fix = v["fix"].as_str().unwrap_or_default();
    assert!(
        fix.starts_with("sysctl -w net.netfilter.nf_conntrack_max="),
        "{fix}"
    );
    assert!(
        v["fix_persistent"]
            .as_str()
            .unwrap_or_default()
            .contains("/etc/sysctl.d/"),
        "{v:#}"
    );
    // `check` sees the same state without eBPF.
    let check = common::run_droptrace(&["check", "--netns", &lab.host, "--port", "5000", "--json"]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("\"cause\":\"conntrack_full\"")),
        "{text}"
    );
}

/// The limit is one for the whole host and written in the initial namespace, while droptrace
/// watches the lab's: that write is still the one that explains the full table.
#[test]
fn the_write_that_lowered_the_limit_while_watched_is_the_culprit() {
    let _one = HOST_LIMIT.lock().unwrap_or_else(|e| e.into_inner());
    require_root();
    let lab = Lab::up(LabSpec::new("ctlower")).unwrap_or_else(|e| panic!("building the lab: {e}"));
    assert_eq!(
        lab.client_request(Duration::from_secs(3)),
        Outcome::Http(200)
    );
    lab.exec(&lab.host, &["conntrack", "-F"])
        .expect("conntrack -F");
    let watch = Watch::start(&["--port", "5000", "--netns", &lab.host]);
    let max = count_in_root() + 64;
    let _limit = LimitGuard::lower_with_sysctl(max);
    fill_table(&lab, max);
    let seen = lab.client_request(Duration::from_secs(3));
    let out = watch.stop();
    assert_eq!(seen, Outcome::Timeout, "{}", out.dump());
    let v = common::final_verdicts(&out);
    assert_eq!(v.len(), 1, "one verdict: {}", out.dump());
    assert_eq!(v[0]["cause"], "conntrack_full", "{:#}", v[0]);
    // Where the kernel lets cgroup/sysctl record it (5.10's verifier refuses it).
    if !common::attached(&out, "sysctl_writes") {
        assert!(v[0]["culprit"].is_null(), "{:#}", v[0]);
        let note = v[0]["culprit_note"].as_str().unwrap_or_default();
        assert!(note.contains("cannot be recorded on this kernel"), "{note}");
        return;
    }
    let culprit = &v[0]["culprit"];
    assert_eq!(culprit["key"], "net.netfilter.nf_conntrack_max", "{culprit:#}");
    assert_eq!(culprit["new"], max.to_string(), "{culprit:#}");
    assert_eq!(culprit["process"]["comm"], "sysctl", "{culprit:#}");
}

#[test]
fn control_the_same_lab_with_room_in_the_table_gives_no_verdict() {
    let _one = HOST_LIMIT.lock().unwrap_or_else(|e| e.into_inner());
    let (lab, _limit) = full_lab("ctroom");
    lab.exec(&lab.host, &["conntrack", "-F"])
        .expect("conntrack -F");
    let watch = Watch::start(&["--port", "5000", "--netns", &lab.host]);
    let seen = lab.client_request(Duration::from_secs(3));
    let out = watch.stop();
    assert_eq!(seen, Outcome::Http(200), "{}", out.dump());
    assert!(common::final_verdicts(&out).is_empty(), "{}", out.dump());
    let check = common::run_droptrace(&["check", "--netns", &lab.host, "--port", "5000", "--json"]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

/// A live connection's conntrack entry lost (deleted here, as a table flush, a conntrack
/// restart or a failover does) with mid-stream pickup off (`nf_conntrack_tcp_loose=0`): the
/// client's next segment is INVALID, not translated, and reaches the host's own stack.
/// `invalid_rule` adds an INVALID drop in INPUT (kube-proxy's and netavark's kind).
fn untracked_midstream(label: &str, invalid_rule: bool, loose: &str) -> (Output, Lab) {
    require_root();
    let lab = Lab::up(LabSpec::new(label)).unwrap_or_else(|e| panic!("building the lab: {e}"));
    if invalid_rule {
        lab.iptables(&common::words(
            "-I INPUT -m conntrack --ctstate INVALID -j DROP",
        ))
        .unwrap();
    }
    let watch = Watch::start(&["--port", "5000", "--netns", &lab.host]);
    // While droptrace watches, as a tuning script would: its author is the culprit.
    lab.sysctl(&lab.host, "net.netfilter.nf_conntrack_tcp_loose", loose)
        .unwrap();
    let ns = tracer::discover::netns::Netns::resolve(&lab.ext).unwrap();
    let host = lab.host.clone();
    ns.run_in(move || {
        use std::io::Write;
        let target = std::net::SocketAddr::from((tracer::lab::HOST_ADDR, 5000));
        let mut s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(3))
            .expect("the handshake is translated");
        let flushed = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &host,
                "conntrack",
                "-D",
                "-p",
                "tcp",
                "--orig-port-dst",
                "5000",
            ])
            .output()
            .unwrap();
        assert!(flushed.status.success(), "{flushed:?}");
        let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
        std::thread::sleep(Duration::from_millis(1500));
    })
    .unwrap();
    (watch.stop(), lab)
}

fn assert_invalid(v: &Value) {
    assert_eq!(v["cause"], "conntrack_invalid", "{v:#}");
    let evidence = v["evidence"].to_string();
    assert!(
        evidence.contains("nat DOCKER rule"),
        "the DNAT exists: {evidence}"
    );
    assert!(
        evidence.contains("nf_conntrack_tcp_be_liberal = 0"),
        "{evidence}"
    );
    assert!(
        evidence.contains("nf_conntrack_tcp_loose = 0"),
        "{evidence}"
    );
    let fix = v["fix"].as_str().unwrap_or_default();
    assert!(fix.contains("nf_conntrack_tcp_be_liberal=1"), "{fix}");
}

#[test]
fn an_untracked_segment_of_a_live_flow_reaches_the_host_and_is_conntrack_invalid() {
    let (out, _lab) = untracked_midstream("ctinv", false, "0");
    let v = common::final_verdicts(&out);
    assert_eq!(v.len(), 1, "one verdict: {}", out.dump());
    assert_invalid(v[0]);
    assert_eq!(v[0]["proximate"]["reason"], "NO_SOCKET", "{:#}", v[0]);
    // The author, where the kernel lets cgroup/sysctl record it (5.10's verifier refuses it).
    if common::attached(&out, "sysctl_writes") {
        let culprit = &v[0]["culprit"];
        assert_eq!(
            culprit["key"], "net.netfilter.nf_conntrack_tcp_loose",
            "{:#}",
            v[0]
        );
        assert_eq!(culprit["new"], "0");
        assert_eq!(culprit["process"]["comm"], "sysctl", "{culprit:#}");
    } else {
        assert!(v[0]["culprit"].is_null());
        let note = v[0]["culprit_note"].as_str().unwrap_or_default();
        assert!(note.contains("cannot be recorded on this kernel"), "{note}");
    }
}

#[test]
fn an_invalid_drop_rule_is_named_with_why_the_packet_was_invalid() {
    let (out, _lab) = untracked_midstream("ctinvrule", true, "0");
    let v = common::final_verdicts(&out);
    assert_eq!(v.len(), 1, "one verdict: {}", out.dump());
    assert_invalid(v[0]);
    let rule = v[0]["proximate"]["rule"].as_str().unwrap_or_default();
    assert!(rule.contains("--ctstate INVALID -j DROP"), "{rule}");
}

#[test]
fn control_a_lost_entry_picked_up_mid_stream_gives_no_verdict() {
    // nf_conntrack_tcp_loose=1 (the default): conntrack takes the segment up again as a new
    // flow, the DNAT applies, nothing is dropped.
    let (out, _lab) = untracked_midstream("ctloose", true, "1");
    assert!(common::final_verdicts(&out).is_empty(), "{}", out.dump());
}
