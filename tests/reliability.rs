//! droptrace runs on hosts already in trouble: it must leave nothing behind however it ends,
//! keep exact counts when its event ring overflows, and fail with one clear sentence.
mod common;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use common::{Watch, require_root, run_droptrace};
use tracer::lab::{self, Lab, LabSpec, Outcome};

/// BPF program ids held by a process, from its fds' fdinfo (prog fds and link fds).
fn prog_ids_of(pid: u32) -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for e in dir.flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for line in text.lines() {
            if let Some(id) = line.strip_prefix("prog_id:") {
                ids.extend(id.trim().parse::<u32>().ok());
            }
        }
    }
    ids
}

fn loaded_prog_ids() -> BTreeSet<u32> {
    let out = std::process::Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("bpftool (apt-get install bpftool)");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["id"].as_u64().map(|id| id as u32))
        .collect()
}

fn lab(label: &str) -> Lab {
    require_root();
    Lab::up(LabSpec::new(label)).unwrap_or_else(|e| panic!("building the lab: {e}"))
}

fn nothing_left_after(signal: i32) {
    let lab = lab(&format!("sig{signal}"));
    let watch = Watch::start(&["--port", "5000", "--netns", &lab.host, "--trace-rules"]);
    let pid = watch.pid();
    let ids = prog_ids_of(pid);
    // One program per hook the start line names (the netfilter hook probes are several).
    let hooks = 1 + watch.start["signals"].as_array().map_or(0, Vec::len);
    let least = if common::kernel::has_netfilter_links() {
        hooks.max(8)
    } else {
        hooks
    };
    assert!(
        ids.len() >= least,
        "droptrace should hold its {least}+ programs: {ids:?}, start: {}",
        watch.start
    );
    assert!(ids.is_subset(&loaded_prog_ids()));
    let tables = lab.exec(&lab.host, &["nft", "list", "tables"]).unwrap();
    assert!(tables.contains("droptrace_trace"), "{tables}");

    let out = watch.stop_with(signal);
    if signal != libc::SIGKILL {
        assert!(out.status.success(), "{}", out.dump());
        assert_eq!(out.of_type("summary").len(), 1, "a summary closes the run");
    }
    // The kernel frees programs asynchronously after the last reference goes.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<u32> = ids.intersection(&loaded_prog_ids()).copied().collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "programs left loaded: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let left_tables = lab.exec(&lab.host, &["nft", "list", "tables"]).unwrap();
    if signal == libc::SIGKILL {
        // Killed before it could clean: the next run removes the tagged table first.
        assert!(left_tables.contains("droptrace_trace"));
        let next = run_droptrace(&[
            "watch",
            "--port",
            "5000",
            "--netns",
            &lab.host,
            "--duration",
            "0.2",
            "--json",
        ]);
        assert!(next.status.success());
        assert!(String::from_utf8_lossy(&next.stdout).contains("left by an earlier droptrace run"));
        let after = lab.exec(&lab.host, &["nft", "list", "tables"]).unwrap();
        assert!(!after.contains("droptrace_trace"), "{after}");
    } else {
        assert!(!left_tables.contains("droptrace_trace"), "{left_tables}");
    }
}

#[test]
fn ctrl_c_leaves_no_program_link_or_ruleset_change() {
    nothing_left_after(libc::SIGINT);
}

#[test]
fn sigterm_leaves_no_program_link_or_ruleset_change() {
    nothing_left_after(libc::SIGTERM);
}

#[test]
fn sigkill_leaves_no_program_and_the_next_run_removes_the_trace_table() {
    nothing_left_after(libc::SIGKILL);
}

#[test]
fn a_tiny_ring_overflows_but_the_counters_stay_exact() {
    let out = ring_storm("ringstorm", &[]);
    // Off by default: the kernel side's anomaly reports stay silent.
    assert!(!out.stderr.contains("droptrace: kernel"), "{}", out.stderr);
}

#[test]
fn with_kernel_log_the_kernel_side_reports_its_full_ring() {
    let out = ring_storm("kernlog", &["--kernel-log"]);
    assert!(
        out.stderr
            .contains("droptrace: kernel WARN: event ring full: an event for port 5001 is lost"),
        "the kernel side's own report (aya-log) on stderr: {}",
        out.stderr
    );
}

/// A burst of drops with one line per packet (`--every-drop`) through a 4 KiB event ring:
/// most of them lost from the ring but every one counted.
fn ring_storm(label: &str, extra: &[&str]) -> common::Output {
    let lab = lab(label);
    let mut args = vec![
        "--port",
        "5001",
        "--netns",
        &lab.host,
        "--ring-bytes",
        "4096",
        "--every-drop",
    ];
    args.extend_from_slice(extra);
    let watch = Watch::start(&args);
    const SENT: u64 = 3000;
    common::udp_burst(&lab, SENT);
    std::thread::sleep(Duration::from_millis(500));
    let out = watch.stop();
    let s = out.summary();
    let (drops, events, lost) = (
        s["drops"].as_u64().unwrap(),
        out.drops().len() as u64,
        s["lost"].as_u64().unwrap(),
    );
    assert_eq!(drops, SENT, "exact counter: {s}");
    assert!(
        lost > 0,
        "a 4 KiB ring must overflow under {SENT} drops: {s}"
    );
    assert_eq!(
        events + lost,
        drops,
        "every drop is an event or a counted loss: {s}"
    );
    assert_eq!(s["by_reason"][common::counted_as("NO_SOCKET")], SENT);
    out
}

/// By default a storm is counted in the kernel: a few drop lines, then flow lines whose
/// counts, with the lines, account for every drop the exact counter saw.
#[test]
fn a_storm_is_counted_in_the_kernel_and_every_drop_accounted_for() {
    let lab = lab("flowstorm");
    let watch = Watch::start(&["--port", "5001", "--netns", &lab.host]);
    const SENT: u64 = 20_000;
    common::udp_burst(&lab, SENT);
    std::thread::sleep(Duration::from_millis(300));
    let out = watch.stop();
    let s = out.summary();
    let lines = out.drops().len() as u64;
    let (aggregated, lost) = (
        s["aggregated"].as_u64().unwrap(),
        s["lost"].as_u64().unwrap(),
    );
    assert_eq!(s["drops"], SENT, "exact counter: {s}");
    assert_eq!(s["drop_events"], lines, "{s}");
    assert_eq!(lines + lost + aggregated, SENT, "lines + lost + flows: {s}");
    assert_eq!(s["flow_map_full"], 0, "{s}");
    assert_eq!(s["drop_flows"], 1, "one client socket, one flow: {s}");
    // A few lines per second and CPU, not one per packet.
    assert!((1..100).contains(&lines), "{lines} drop lines: {s}");
    let flows = out.of_type("flow");
    assert!(!flows.is_empty(), "no flow line: {}", out.dump());
    let new: u64 = flows.iter().map(|f| f["new"].as_u64().unwrap()).sum();
    assert_eq!(new, aggregated, "flow lines add up to the summary's: {s}");
    let last = flows.last().unwrap();
    assert_eq!(last["packets"], SENT, "{last}");
    assert_eq!(last["lines"].as_u64().unwrap(), lines + lost, "{last}");
    assert_eq!(last["port"], 5001);
    assert_eq!(last["src"], lab::EXT_ADDR.to_string());
    assert_eq!(last["proto"], "udp");
    common::assert_reason(last, "NO_SOCKET");
    let verdicts = out.of_type("verdict");
    let closing = verdicts
        .iter()
        .find(|v| v["final"] == true)
        .expect("a verdict");
    assert_eq!(last["cause"], closing["cause"], "{last}");
    assert_eq!(closing["packets"], SENT, "{closing}");
}

/// `--every-drop` keeps one line per packet: with a ring that holds them all, every drop is
/// a line.
#[test]
fn every_drop_prints_each_packet_of_a_burst() {
    let lab = lab("everydrop");
    let watch = Watch::start(&["--port", "5001", "--netns", &lab.host, "--every-drop"]);
    const SENT: u64 = 2000;
    common::udp_burst(&lab, SENT);
    std::thread::sleep(Duration::from_millis(300));
    let out = watch.stop();
    let s = out.summary();
    assert_eq!(s["drops"], SENT, "{s}");
    assert_eq!(s["lost"], 0, "{s}");
    assert_eq!(s["aggregated"], 0, "{s}");
    assert_eq!(out.drops().len() as u64, SENT, "{s}");
    assert!(out.of_type("flow").is_empty());
}

#[test]
fn bad_values_are_one_sentence_errors_without_backtraces() {
    for (args, code, says) in [
        (&["watch"][..], 2, "--port"),
        (&["watch", "--port", "70000"][..], 2, "70000"),
        (
            &["watch", "--port", "5000", "--duration", "soon"][..],
            2,
            "soon",
        ),
        (
            &["watch", "--port", "5000", "--ring-bytes", "1000"][..],
            2,
            "power of two",
        ),
        (
            &["watch", "--port", "5000", "--netns", "/etc/hostname"][..],
            2,
            "not a network namespace",
        ),
        (
            &["watch", "--docker-host", "/nonexistent/docker.sock"][..],
            3,
            "no container engine answers",
        ),
        (
            &["ports", "--docker-host", "/nonexistent/docker.sock"][..],
            3,
            "--docker-host",
        ),
        (
            &["watch", "--port", "5000", "--addr", "not-an-address"][..],
            2,
            "not-an-address",
        ),
    ] {
        let out = run_droptrace(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn once_attached_it_drops_the_capabilities_it_no_longer_needs() {
    let lab = lab("caps");
    let watch = Watch::start(&["--port", "5000", "--netns", &lab.host]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", watch.pid())).unwrap();
    let caps = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
            .unwrap()
    };
    let (eff, bnd) = (caps("CapEff:"), caps("CapBnd:"));
    let out = watch.stop();
    assert!(out.status.success(), "{}", out.dump());
    for (cap, name) in [
        (7, "CAP_SETUID"),
        (16, "CAP_SYS_MODULE"),
        (22, "CAP_SYS_BOOT"),
        (25, "CAP_SYS_TIME"),
        (27, "CAP_MKNOD"),
    ] {
        assert_eq!(eff & (1 << cap), 0, "{name} still effective ({eff:#x})");
        assert_eq!(
            bnd & (1 << cap),
            0,
            "{name} still in the bounding set ({bnd:#x})"
        );
    }
    for (cap, name) in [(12, "CAP_NET_ADMIN"), (21, "CAP_SYS_ADMIN")] {
        assert_ne!(eff & (1 << cap), 0, "{name} is still needed ({eff:#x})");
    }
}

#[test]
fn no_port_given_and_nothing_published_says_how_to_name_one() {
    let lab = lab("noports");
    // The client namespace has no engine and no DNAT rule: nothing to discover.
    let out = run_droptrace(&["watch", "--netns", &lab.ext, "--duration", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--port"), "{err}");
    // `check` there has nothing to check: it says so, and how to name a port, rather than
    // calling zero ports healthy.
    for json in [false, true] {
        let mut args = vec!["check", "--netns", lab.ext.as_str()];
        args.extend(json.then_some("--json"));
        let out = run_droptrace(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("nothing checked") && err.contains("--port PORT"),
            "{err}"
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("healthy"));
    }
}

#[test]
fn missing_iptables_and_nft_binaries_lower_precision_but_do_not_fail() {
    require_root();
    // iptables-*-save and nft live in /usr/sbin on Debian: hide them.
    let out = std::process::Command::new(&*common::DROPTRACE)
        .args(["watch", "--port", "5000", "--duration", "0.3", "--json"])
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let notes = start["notes"].to_string();
    assert!(
        notes.contains("is not installed"),
        "the missing tools are named: {notes}"
    );
}

/// A state capture runs several tools in the namespace. While one of them is slow, the
/// metrics endpoint must still answer and Ctrl-C must still end the run: captures run off the
/// event loop. A wrapper first in droptrace's PATH makes iptables-nft-save take 20 s once the
/// test says so (after the start snapshot); the bounds below are responsiveness, not speed.
#[test]
fn metrics_and_ctrl_c_stay_responsive_while_a_state_capture_is_slow() {
    let lab = lab("slowcap");
    lab.sysctl(&lab.host, "net.ipv4.ip_forward", "0").unwrap();
    let dir = std::env::temp_dir().join(format!("droptrace-slowtools-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let real = String::from_utf8(
        std::process::Command::new("sh")
            .args(["-c", "command -v iptables-nft-save"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let marker = dir.join("slow");
    let wrapper = dir.join("iptables-nft-save");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n[ -e {} ] && sleep 20\nexec {} \"$@\"\n",
            marker.display(),
            real.trim()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let addr = format!("127.0.0.1:{}", 20_000 + std::process::id() % 1000);
    let watch = Watch::start_env(
        &["--port", "5000", "--netns", &lab.host, "--metrics", &addr],
        &[("PATH", &path)],
    );
    std::fs::write(&marker, "").unwrap();

    // The first drop of its kind makes droptrace read the namespace's state: 20 s from now on.
    assert_eq!(lab.client_request(Duration::from_secs(2)), Outcome::Timeout);
    let asked = Instant::now();
    let response = common::scrape(&addr, "/metrics");
    let answered_in = asked.elapsed();
    let stopped = Instant::now();
    let out = watch.stop();
    let ended_in = stopped.elapsed();
    let _ = std::fs::remove_dir_all(&dir);

    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        answered_in < Duration::from_secs(3),
        "/metrics answered after {answered_in:?} while a capture was running"
    );
    assert!(
        ended_in < Duration::from_secs(6),
        "Ctrl-C ended the run after {ended_in:?} while a capture was running"
    );
    assert!(out.status.success(), "{}", out.dump());
    // The drop is still attributed, from the start snapshot the abandoned capture left.
    let causes: Vec<_> = out
        .of_type("verdict")
        .iter()
        .map(|v| v["cause"].clone())
        .collect();
    assert!(
        causes.iter().all(|c| c == "forwarding_disabled") && !causes.is_empty(),
        "{}",
        out.dump()
    );
}
