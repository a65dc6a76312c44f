//! `cargo xtask bench`: droptrace's cost and capacity, measured in its own namespace lab,
//! side by side with the bpftrace one-liner an engineer would otherwise run, in one run.
//! Every figure is a ratio against a baseline measured in the same run; nothing here is a
//! test (no timing is asserted anywhere).
//!
//! P1 overhead: iperf3 TCP throughput client → published port → DNAT → forward → container,
//!    droptrace watching that port vs not running (A/B alternated), watching another port,
//!    and watching the port without the routing and forwarded-packet hooks.
//! P2 drop storm: a UDP flood from one core to a closed port of the host; ground truth from
//!    the kernel's own counter (nstat UdpNoPorts), droptrace's exact counters, events
//!    delivered and lost; the same flood against `bpftrace -e 'tracepoint:skb:kfree_skb {…}'`.
//! P3 time to first verdict: drops already flowing, exec → first verdict line; bpftrace's
//!    launch → first output.
//! P4 footprint: droptrace's peak RSS and CPU seconds per million drop events.
//! P5 aya-log: the drop program's kernel time per drop with `--kernel-log` off (the default)
//!    and on, from the kernel's per-program statistics.
use std::{
    io::{BufRead, BufReader, Read},
    net::{IpAddr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::json;
use tracer::{
    discover::netns::Netns,
    lab::{self, Lab, LabSpec},
};

const PAIRS: usize = 5;
const IPERF_SECS: u32 = 2;
const FLOOD: Duration = Duration::from_secs(3);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

struct Droptrace {
    child: Child,
    started: Instant,
    first_verdict: Option<Duration>,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<Option<Duration>>>,
}

fn start_droptrace(bin: &Path, args: &[&str]) -> Result<Droptrace> {
    let started = Instant::now();
    let mut child = Command::new(bin)
        .arg("watch")
        .arg("--json")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting droptrace")?;
    let stdout = child.stdout.take().context("stdout")?;
    let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = Arc::clone(&lines);
    let reader = std::thread::spawn(move || {
        let mut first_verdict = None;
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            if line.contains("\"type\":\"start\"") {
                let _ = tx.send(());
            }
            if first_verdict.is_none() && line.contains("\"type\":\"verdict\"") {
                first_verdict = Some(started.elapsed());
            }
            // Keep only what the bench reads: drop lines would cost memory for nothing.
            if !line.contains("\"type\":\"drop\"") {
                sink.lock().map(|mut l| l.push(line)).ok();
            }
        }
        first_verdict
    });
    rx.recv_timeout(Duration::from_secs(30))
        .context("droptrace did not start")?;
    Ok(Droptrace {
        child,
        started,
        first_verdict: None,
        lines,
        reader: Some(reader),
    })
}

/// rusage of a reaped child: (peak RSS KiB, CPU seconds).
fn wait_rusage(pid: i32) -> (u64, f64) {
    let mut status = 0;
    // SAFETY: zeroed rusage is valid; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child; pointers are valid for the call.
    unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let cpu = ru.ru_utime.tv_sec as f64
        + ru.ru_utime.tv_usec as f64 / 1e6
        + ru.ru_stime.tv_sec as f64
        + ru.ru_stime.tv_usec as f64 / 1e6;
    (ru.ru_maxrss as u64, cpu)
}

impl Droptrace {
    /// Ctrl-C; returns (summary JSON, peak RSS KiB, CPU seconds).
    fn stop(mut self) -> Result<(serde_json::Value, u64, f64)> {
        let pid = self.child.id() as i32;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let (rss, cpu) = wait_rusage(pid);
        if let Some(r) = self.reader.take() {
            self.first_verdict = r.join().ok().flatten();
        }
        let lines = self.lines.lock().map(|l| l.clone()).unwrap_or_default();
        let summary = lines
            .iter()
            .rev()
            .find(|l| l.contains("\"type\":\"summary\""))
            .context("no summary line")?;
        let _ = self.started;
        Ok((serde_json::from_str(summary)?, rss, cpu))
    }
}

fn iperf_bps(lab: &Lab) -> Result<f64> {
    let out = lab
        .exec(
            &lab.ext,
            &[
                "iperf3",
                "-c",
                &lab::HOST_ADDR.to_string(),
                "-p",
                "5000",
                "-t",
                &IPERF_SECS.to_string(),
                "-J",
            ],
        )
        .map_err(|e| anyhow::anyhow!("iperf3: {e}"))?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 JSON without sum_received")
}

/// Floods UDP to a closed port of the host from the client namespace for `dur`; returns the
/// datagrams sent.
fn flood(lab: &Lab, dur: Duration) -> Result<u64> {
    let ns = Netns::resolve(&lab.ext)?;
    let sent = ns.run_in(move || {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
        let to = SocketAddr::new(IpAddr::V4(lab::HOST_ADDR), 5001);
        let end = Instant::now() + dur;
        let mut n = 0u64;
        while Instant::now() < end {
            for _ in 0..256 {
                if sock.send_to(b"x", to).is_ok() {
                    n += 1;
                }
            }
        }
        n
    })?;
    Ok(sent)
}

fn udp_noports(lab: &Lab) -> Result<u64> {
    let out = lab
        .exec(&lab.host, &["nstat", "-az", "UdpNoPorts", "--json"])
        .map_err(|e| anyhow::anyhow!("nstat: {e}"))?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v["kernel"]["UdpNoPorts"].as_u64().unwrap_or(0))
}

/// The engineer's one-liner, run for `dur` while `during` runs; returns (lines printed,
/// events bpftrace reported lost, launch → first output).
fn bpftrace_run(
    during: impl FnOnce() -> Result<u64>,
    dur: Duration,
) -> Result<(u64, u64, Option<Duration>, u64)> {
    let started = Instant::now();
    // bpftrace needs tracefs for tracepoints; a fresh host may not have it mounted, so it runs
    // in a private mount namespace with its own (the host is unchanged).
    let mut child = Command::new("unshare")
        .args([
            "-m",
            "sh",
            "-c",
            "mount --make-rprivate / && { mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing; } && \
             exec bpftrace -e 'tracepoint:skb:kfree_skb { printf(\"%p %d\\n\", args->location, args->reason); }'",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("bpftrace (apt-get install bpftrace)")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let count = Arc::new(AtomicU64::new(0));
    let first = Arc::new(std::sync::Mutex::new(None));
    let lost = Arc::new(AtomicU64::new(0));
    let attached = Arc::new(AtomicBool::new(false));
    let reader = {
        let (count, first, lost, attached) =
            (count.clone(), first.clone(), lost.clone(), attached.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if line.starts_with("Attaching") {
                    attached.store(true, Ordering::SeqCst);
                    continue;
                }
                if let Some(n) = line
                    .strip_prefix("Lost ")
                    .and_then(|r| r.split_whitespace().next())
                {
                    lost.fetch_add(n.parse().unwrap_or(0), Ordering::SeqCst);
                    continue;
                }
                if line.starts_with("0x") && count.fetch_add(1, Ordering::SeqCst) == 0 {
                    *first.lock().expect("lock") = Some(started.elapsed());
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !attached.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = during()?;
    std::thread::sleep(
        dur.saturating_sub(Duration::from_millis(0))
            .min(Duration::from_millis(500)),
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = child.wait();
    let _ = reader.join();
    let mut err = String::new();
    let _ = stderr.read_to_string(&mut err);
    for line in err.lines() {
        if let Some(n) = line
            .strip_prefix("Lost ")
            .and_then(|r| r.split_whitespace().next())
        {
            lost.fetch_add(n.parse().unwrap_or(0), Ordering::SeqCst);
        }
    }
    let first = *first.lock().expect("lock");
    Ok((
        count.load(Ordering::SeqCst),
        lost.load(Ordering::SeqCst),
        first,
        sent,
    ))
}

/// P1: throughput with droptrace watching the port, and watching another, as ratios to the
/// runs just before each.
fn p1_overhead(bin: &Path, lab: &Lab) -> Result<serde_json::Value> {
    eprintln!("P1 overhead: {PAIRS} A/B pairs of {IPERF_SECS}s iperf3 runs…");
    let host = lab.host.as_str();
    // Each ratio against a run without droptrace just before it.
    let ratio = |args: &[&str]| -> Result<(f64, f64)> {
        let base = iperf_bps(lab)?;
        let dt = start_droptrace(bin, args)?;
        let with = iperf_bps(lab)?;
        dt.stop()?;
        Ok((with / base, base))
    };
    let (mut watching, mut other, mut bare, mut base_all) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..PAIRS {
        let (r, base) = ratio(&["--port", "5000", "--netns", host])?;
        watching.push(r);
        base_all.push(base);
        other.push(ratio(&["--port", "5001", "--netns", host])?.0);
        let no_fwd = ["--port", "5000", "--netns", host, "--no-forwarding-hooks"];
        bare.push(ratio(&no_fwd)?.0);
    }
    Ok(json!({
        "baseline_bps_median": median(base_all),
        "ratio_watching_port_median": median(watching.clone()),
        "ratio_watching_other_port_median": median(other.clone()),
        "ratio_watching_port_without_forwarding_hooks_median": median(bare.clone()),
        "ratios_watching_port": watching,
        "ratios_watching_other_port": other,
        "ratios_watching_port_without_forwarding_hooks": bare,
        "target": 0.98,
    }))
}

/// P2 and P4: a UDP flood to a closed port under droptrace (exact counter against the
/// kernel's own, events delivered and lost, footprint), then under the bpftrace one-liner.
fn p2_storm(bin: &Path, lab: &Lab) -> Result<(serde_json::Value, serde_json::Value)> {
    eprintln!(
        "P2 drop storm: {}s UDP flood to a closed port…",
        FLOOD.as_secs()
    );
    let before = udp_noports(lab)?;
    let dt = start_droptrace(bin, &["--port", "5001", "--netns", &lab.host])?;
    let dt_started = Instant::now();
    let sent = flood(lab, FLOOD)?;
    std::thread::sleep(Duration::from_millis(500));
    let storm_secs = dt_started.elapsed().as_secs_f64();
    let (summary, rss_kib, cpu) = dt.stop()?;
    let truth = udp_noports(lab)? - before;
    let (drops, events, lost) = (
        summary["drops"].as_u64().unwrap_or(0),
        summary["events"].as_u64().unwrap_or(0),
        summary["lost"].as_u64().unwrap_or(0),
    );
    let (bt_lines, bt_lost, _, bt_sent) = bpftrace_run(|| flood(lab, FLOOD), FLOOD)?;
    let storm = json!({
        "sent": sent,
        "kernel_ground_truth": truth,
        "droptrace_exact_counter": drops,
        "counter_equals_ground_truth": drops == truth,
        "events_delivered": events,
        "events_lost": lost,
        "delivered_or_counted_ratio": if drops > 0 { (events + lost) as f64 / drops as f64 } else { 0.0 },
        "droptrace_event_rate_per_s": events as f64 / storm_secs,
        "bpftrace_flood_sent": bt_sent,
        "bpftrace_lines_printed": bt_lines,
        "bpftrace_lost_reported": bt_lost,
        "bpftrace_event_rate_per_s": bt_lines as f64 / storm_secs,
        "rate_ratio_droptrace_over_bpftrace": if bt_lines > 0 { events as f64 / bt_lines as f64 } else { f64::INFINITY },
    });
    let footprint = json!({
        "peak_rss_mib": rss_kib as f64 / 1024.0,
        "cpu_seconds": cpu,
        "events": events,
        "cpu_seconds_per_million_events": if events > 0 { cpu / (events as f64 / 1e6) } else { 0.0 },
        "targets": {"peak_rss_mib": 30, "cpu_seconds_per_million_events": 0.3},
    });
    Ok((storm, footprint))
}

/// A light background flood to a closed port, until the flag is set.
fn background_flood(lab: &Lab, stop: Arc<AtomicBool>) -> Result<std::thread::JoinHandle<()>> {
    let ns = Netns::resolve(&lab.ext)?;
    Ok(std::thread::spawn(move || {
        let _ = ns.run_in(move || {
            let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
            let to = SocketAddr::new(IpAddr::V4(lab::HOST_ADDR), 5001);
            while !stop.load(Ordering::SeqCst) {
                let _ = sock.send_to(b"x", to);
                std::thread::sleep(Duration::from_micros(200));
            }
        });
    }))
}

/// P3: drops already flowing, exec → first verdict line (bounded), three times; bpftrace's
/// launch → first line.
fn p3_first_verdict(bin: &Path, lab: &Lab) -> Result<serde_json::Value> {
    eprintln!("P3 time to first verdict…");
    let stop_flood = Arc::new(AtomicBool::new(false));
    let bg = background_flood(lab, Arc::clone(&stop_flood))?;
    std::thread::sleep(Duration::from_millis(300));
    let mut ttfv = Vec::new();
    for _ in 0..3 {
        let mut dt = start_droptrace(bin, &["--port", "5001", "--netns", &lab.host])?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let has_verdict = |dt: &Droptrace| {
            dt.lines
                .lock()
                .map(|l| l.iter().any(|x| x.contains("\"type\":\"verdict\"")))
                .unwrap_or(false)
        };
        while Instant::now() < deadline && !has_verdict(&dt) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let pid = dt.child.id() as i32;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGINT) };
        wait_rusage(pid);
        if let Some(t) = dt.reader.take().and_then(|r| r.join().ok().flatten()) {
            ttfv.push(t.as_secs_f64());
        }
    }
    let (_, _, bt_first, _) = bpftrace_run(|| Ok(0), Duration::from_millis(800))?;
    stop_flood.store(true, Ordering::SeqCst);
    let _ = bg.join();
    Ok(json!({
        "droptrace_runs": ttfv,
        "droptrace_median": median(ttfv.clone()),
        "bpftrace_launch_to_first_output": bt_first.map(|d| d.as_secs_f64()),
        "target": 0.5,
    }))
}

/// The busiest eBPF program `pid` holds (in a storm: the drop program) as (runs, ns per
/// run), from its fds' fdinfo (kernel.bpf_stats_enabled must be on).
fn busiest_program(pid: u32) -> Option<(u64, f64)> {
    let field = |info: &str, key: &str| -> Option<u64> {
        info.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
    };
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .ok()?
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| Some((field(&info, "run_cnt:")?, field(&info, "run_time_ns:")?)))
        .filter(|(runs, _)| *runs > 0)
        .max_by_key(|(runs, _)| *runs)
        .map(|(runs, ns)| (runs, ns as f64 / runs as f64))
}

/// P5: what aya-log costs the drop program per drop, with `--kernel-log` off (the default:
/// one check per report site) and on, alternated in the same storm; the kernel's own
/// per-program statistics are turned on for the phase and restored after.
fn p5_kernel_log(bin: &Path, lab: &Lab) -> Result<serde_json::Value> {
    eprintln!("P5 aya-log cost: {PAIRS} off/on pairs of a 1 s flood…");
    const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let was = std::fs::read_to_string(STATS).unwrap_or_else(|_| "0".into());
    std::fs::write(STATS, "1").context("turning on kernel.bpf_stats_enabled")?;
    let per_drop = |extra: &[&str]| -> Result<Option<f64>> {
        let mut args = vec!["--port", "5001", "--netns", lab.host.as_str()];
        args.extend(extra);
        let dt = start_droptrace(bin, &args)?;
        flood(lab, Duration::from_secs(1))?;
        let busiest = busiest_program(dt.child.id());
        dt.stop()?;
        Ok(busiest.map(|(_, ns)| ns))
    };
    let result = (|| -> Result<serde_json::Value> {
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for _ in 0..PAIRS {
            off.extend(per_drop(&[])?);
            on.extend(per_drop(&["--kernel-log"])?);
        }
        let (off_m, on_m) = (median(off.clone()), median(on.clone()));
        Ok(json!({
            "ns_per_drop_log_off": off,
            "ns_per_drop_log_on": on,
            "ns_per_drop_log_off_median": off_m,
            "ns_per_drop_log_on_median": on_m,
            "ratio_off_over_on_median": if on_m > 0.0 { off_m / on_m } else { 0.0 },
        }))
    })();
    let _ = std::fs::write(STATS, was.trim());
    result
}

pub fn run(bin: &Path, out_dir: &Path) -> Result<()> {
    for tool in ["iperf3", "bpftrace", "nstat"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()?
            .stdout
            .is_empty()
        {
            bail!("{tool} is not installed: scripts/setup.sh installs it");
        }
    }
    let mut spec = LabSpec::new("bench");
    spec.server = false;
    let lab = Lab::up(spec).map_err(|e| anyhow::anyhow!("building the lab: {e}"))?;
    let mut server = Command::new("ip")
        .args(["netns", "exec", &lab.ctr, "iperf3", "-s", "-p", "5000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("iperf3 server")?;
    std::thread::sleep(Duration::from_millis(500));
    let result = (|| -> Result<serde_json::Value> {
        let p1 = p1_overhead(bin, &lab)?;
        let (p2, p4) = p2_storm(bin, &lab)?;
        let p3 = p3_first_verdict(bin, &lab)?;
        let p5 = p5_kernel_log(bin, &lab)?;
        Ok(json!({
            "machine": {
                "kernel": tracer::load::kernel::release(),
                "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            },
            "p1_overhead": p1,
            "p2_storm": p2,
            "p3_time_to_first_verdict_s": p3,
            "p4_footprint": p4,
            "p5_kernel_log": p5,
        }))
    })();
    let _ = server.kill();
    let _ = server.wait();
    drop(lab);
    let v = result?;
    std::fs::create_dir_all(out_dir)?;
    let json_path = out_dir.join("bench.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&v)?)?;
    println!("{}", table(&v));
    eprintln!("written: {}", json_path.display());
    Ok(())
}

fn table(v: &serde_json::Value) -> String {
    let f = |x: &serde_json::Value| x.as_f64().map_or("-".into(), |n| format!("{n:.3}"));
    let p1 = &v["p1_overhead"];
    let p2 = &v["p2_storm"];
    let p3 = &v["p3_time_to_first_verdict_s"];
    let p4 = &v["p4_footprint"];
    let p5 = &v["p5_kernel_log"];
    format!(
        "| measure | result | target |\n|---|---|---|\n\
         | P1 throughput ratio, watching the port (median of {PAIRS} A/B pairs) | {} | ≥ 0.98 |\n\
         | P1 throughput ratio, watching another port | {} | ≥ 0.98 |\n\
         | P1 throughput ratio, watching the port without the forwarding hooks | {} | ≥ 0.98 |\n\
         | P2 exact counter = kernel ground truth (UdpNoPorts) | {} ({} vs {}) | equal |\n\
         | P2 events delivered / lost | {} / {} (delivered+counted = {} of drops) | ≥ 99.9% or every loss counted |\n\
         | P2 event rate, droptrace / bpftrace one-liner | {} ({:.0}/s vs {:.0}/s; bpftrace reported {} lost) | ≥ 5× |\n\
         | P3 exec → first verdict, drops flowing (median of 3) | {} s (bpftrace launch → first line: {} s) | ≤ 0.5 s |\n\
         | P4 peak RSS | {} MiB | ≤ 30 MiB |\n\
         | P4 CPU seconds per million drop events | {} | ≤ 0.3 |\n\
         | P5 drop program ns/drop, --kernel-log off / on (median of {PAIRS} pairs) | {} ({} ns vs {} ns) | off ≤ on |\n\
         \nmachine: {}\n",
        f(&p1["ratio_watching_port_median"]),
        f(&p1["ratio_watching_other_port_median"]),
        f(&p1["ratio_watching_port_without_forwarding_hooks_median"]),
        p2["counter_equals_ground_truth"],
        p2["droptrace_exact_counter"],
        p2["kernel_ground_truth"],
        p2["events_delivered"],
        p2["events_lost"],
        f(&p2["delivered_or_counted_ratio"]),
        f(&p2["rate_ratio_droptrace_over_bpftrace"]),
        p2["droptrace_event_rate_per_s"].as_f64().unwrap_or(0.0),
        p2["bpftrace_event_rate_per_s"].as_f64().unwrap_or(0.0),
        p2["bpftrace_lost_reported"],
        f(&p3["droptrace_median"]),
        f(&p3["bpftrace_launch_to_first_output"]),
        f(&p4["peak_rss_mib"]),
        f(&p4["cpu_seconds_per_million_events"]),
        f(&p5["ratio_off_over_on_median"]),
        f(&p5["ns_per_drop_log_off_median"]),
        f(&p5["ns_per_drop_log_on_median"]),
        v["machine"],
    )
}

/// target/release/droptrace, built first.
pub fn release_binary() -> Result<PathBuf> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--locked", "-p", "tracer"])
        .status()?;
    if !status.success() {
        bail!("cargo build --release failed");
    }
    Ok(PathBuf::from("target/release/droptrace"))
}
