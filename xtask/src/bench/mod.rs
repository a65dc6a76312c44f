//! `cargo xtask bench`: droptrace's cost and capacity, measured in its own namespace lab,
//! side by side with the bpftrace one-liner an engineer would otherwise run, in one run.
//! Every figure is a ratio against a baseline measured in the same run; nothing here is a
//! test (no timing is asserted anywhere).
//!
//! P1 overhead: iperf3 TCP throughput client → published port → DNAT → forward → container,
//!    droptrace watching that port vs not running (A/B alternated), watching another port,
//!    and watching the port without the routing and forwarded-packet hooks.
//! P2 drop storm: a UDP flood to a closed port of the host, from one core and from every
//!    core; ground truth from the kernel's own counter (nstat UdpNoPorts). In the default
//!    mode (in-kernel aggregation): drops accounted (lines + lost + flows = exact counter =
//!    ground truth), droptrace's CPU during the storm per million drops, and the generator's
//!    rate beside the rate without droptrace (alternated pairs). With `--every-drop`: events
//!    delivered and lost, CPU per million events, and the event rate against
//!    `bpftrace -e 'tracepoint:skb:kfree_skb { printf(…) }'` on the same flood.
//! P3 time to first verdict: drops already flowing, exec → first verdict line; bpftrace's
//!    launch → first output.
//! P4 footprint: droptrace's peak RSS in a storm, default and `--every-drop`.
//! P5 aya-log: the drop program's kernel time per drop with `--kernel-log` off (the default)
//!    and on, from the kernel's per-program statistics.
//! P6 encoders: ns per drop line written from a flow's template (the storm path) and from a
//!    record through serde (a flow's first drop), JSON and human.
//! P8 per program: each of droptrace's programs' kernel time per run
//!    (kernel.bpf_stats_enabled), on traffic droptrace does not watch (iperf3 through the
//!    published port and a flood of drops to another closed port, while it watches 5001) and
//!    on watched drops (the flood to 5001), beside an empty tp_btf program on the drop hook
//!    (`bench_floor`, the floor any program costs) attached in the same run.
//! P7 recorder: `droptrace record`'s own CPU while nothing changes (beside `watch`'s idle CPU
//!    over the same time), a fingerprint's CPU with the tools it runs, a burst of sysctl writes
//!    (all recorded? CPU per change), and its RSS: steady, and the peak while it loads.
//!
//! droptrace's output is read in 64 KiB blocks and its drop lines only counted, so the
//! bench's reader is not what limits the rate it measures.
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

mod programs;

const PAIRS: usize = 5;
/// P1's A/B pairs: its spread between pairs is a few percent, so 0.98 needs many.
const P1_PAIRS: usize = 10;
const IPERF_SECS: u32 = 2;
const FLOOD: Duration = Duration::from_secs(3);
/// The default-mode storm's A/B pairs (generator without, then with droptrace).
const STORM_PAIRS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

struct Droptrace {
    child: Child,
    /// Every line but the drop lines, which are only counted.
    lines: Arc<std::sync::Mutex<Vec<String>>>,
    drop_lines: Arc<AtomicU64>,
    reader: Option<std::thread::JoinHandle<Option<Duration>>>,
}

/// Reads droptrace's stdout in blocks: drop lines counted (a byte compare each), every other
/// line kept; the first verdict's time since `started`.
fn read_output(
    mut stdout: impl Read,
    started: Instant,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
    drops: Arc<AtomicU64>,
    on_start: std::sync::mpsc::Sender<()>,
) -> Option<Duration> {
    const DROP: &[u8] = b"{\"type\":\"drop\"";
    let mut first_verdict = None;
    let (mut buf, mut carry) = (vec![0u8; 1 << 16], Vec::new());
    loop {
        let n = match stdout.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut at = 0;
        while let Some(end) = buf[at..n].iter().position(|&b| b == b'\n') {
            let piece = &buf[at..at + end];
            at += end + 1;
            let line: &[u8] = if carry.is_empty() {
                piece
            } else {
                carry.extend_from_slice(piece);
                &carry
            };
            if line.starts_with(DROP) {
                drops.fetch_add(1, Ordering::Relaxed);
            } else {
                let text = String::from_utf8_lossy(line).into_owned();
                if text.contains("\"type\":\"start\"") {
                    let _ = on_start.send(());
                }
                if first_verdict.is_none() && text.contains("\"type\":\"verdict\"") {
                    first_verdict = Some(started.elapsed());
                }
                lines.lock().map(|mut l| l.push(text)).ok();
            }
            carry.clear();
        }
        carry.extend_from_slice(&buf[at..n]);
    }
    first_verdict
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
    let drop_lines = Arc::new(AtomicU64::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = {
        let (lines, drops) = (Arc::clone(&lines), Arc::clone(&drop_lines));
        std::thread::spawn(move || read_output(stdout, started, lines, drops, tx))
    };
    rx.recv_timeout(Duration::from_secs(30))
        .context("droptrace did not start")?;
    Ok(Droptrace {
        child,
        lines,
        drop_lines,
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

/// CPU time of every thread of `pid` so far, in seconds (schedstat: nanoseconds on CPU).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum::<u64>() as f64
        / 1e9
}

/// What a run of droptrace ended with.
struct Ended {
    summary: serde_json::Value,
    drop_lines: u64,
    flow_lines: Vec<serde_json::Value>,
    rss_kib: u64,
}

impl Droptrace {
    /// Ctrl-C; its summary, drop and flow lines, peak RSS.
    fn stop(mut self) -> Result<Ended> {
        let pid = self.child.id() as i32;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let (rss_kib, _) = wait_rusage(pid);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let lines = self.lines.lock().map(|l| l.clone()).unwrap_or_default();
        let parsed: Vec<serde_json::Value> = lines
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let summary = parsed
            .iter()
            .rev()
            .find(|v| v["type"] == "summary")
            .cloned()
            .context("no summary line")?;
        Ok(Ended {
            summary,
            drop_lines: self.drop_lines.load(Ordering::SeqCst),
            flow_lines: parsed.into_iter().filter(|v| v["type"] == "flow").collect(),
            rss_kib,
        })
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

/// Floods UDP to a closed port of the host from the client namespace for `dur`, from
/// `threads` sockets (one per thread, each its own flow); returns the datagrams sent.
fn flood_from(lab: &Lab, dur: Duration, threads: usize) -> Result<u64> {
    flood_port(lab, dur, threads, 5001)
}

/// A UDP flood from the client to `port` of the host (closed: every datagram is a drop).
fn flood_port(lab: &Lab, dur: Duration, threads: usize, port: u16) -> Result<u64> {
    let ns = Arc::new(Netns::resolve(&lab.ext)?);
    let end = Instant::now() + dur;
    let senders: Vec<_> = (0..threads)
        .map(|_| {
            let ns = Arc::clone(&ns);
            std::thread::spawn(move || {
                ns.run_in(move || {
                    let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
                    let to = SocketAddr::new(IpAddr::V4(lab::HOST_ADDR), port);
                    let mut n = 0u64;
                    while Instant::now() < end {
                        for _ in 0..256 {
                            if sock.send_to(b"x", to).is_ok() {
                                n += 1;
                            }
                        }
                    }
                    n
                })
            })
        })
        .collect();
    let mut sent = 0;
    for s in senders {
        sent += s
            .join()
            .map_err(|_| anyhow::anyhow!("a flood thread panicked"))??;
    }
    Ok(sent)
}

fn flood(lab: &Lab, dur: Duration) -> Result<u64> {
    flood_from(lab, dur, 1)
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
    eprintln!("P1 overhead: {P1_PAIRS} A/B pairs of {IPERF_SECS}s iperf3 runs…");
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
    for _ in 0..P1_PAIRS {
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

/// One flood under droptrace: what it sent, the kernel's count of the drops, droptrace's
/// CPU seconds during the flood (and the half second after, while it catches up), how it
/// ended.
struct Storm {
    sent: u64,
    truth: u64,
    cpu: f64,
    secs: f64,
    ended: Ended,
}

fn storm_under(
    bin: &Path,
    lab: &Lab,
    extra: &[&str],
    threads: usize,
    dur: Duration,
) -> Result<Storm> {
    let mut args = vec!["--port", "5001", "--netns", lab.host.as_str()];
    args.extend(extra);
    let before = udp_noports(lab)?;
    let dt = start_droptrace(bin, &args)?;
    let pid = dt.child.id();
    let cpu0 = cpu_seconds(pid);
    let started = Instant::now();
    let sent = flood_from(lab, dur, threads)?;
    let secs = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let cpu = cpu_seconds(pid) - cpu0;
    let ended = dt.stop()?;
    let truth = udp_noports(lab)? - before;
    Ok(Storm {
        sent,
        truth,
        cpu,
        secs,
        ended,
    })
}

/// The default mode in a storm from `threads` cores: alternated pairs of the same flood
/// without and with droptrace; the generator's rate ratio, droptrace's CPU per million
/// drops, and whether every run accounted for every drop exactly.
fn default_storm(bin: &Path, lab: &Lab, threads: usize) -> Result<(serde_json::Value, u64)> {
    let dur = Duration::from_secs(2);
    let (mut ratios, mut cpu, mut drops, mut runs, mut rss) =
        (Vec::new(), 0.0, 0u64, Vec::new(), 0u64);
    for _ in 0..STORM_PAIRS {
        let base = flood_from(lab, dur, threads)?;
        let st = storm_under(bin, lab, &[], threads, dur)?;
        let s = &st.ended.summary;
        let n = |k: &str| s[k].as_u64().unwrap_or(0);
        ratios.push(st.sent as f64 / base.max(1) as f64);
        cpu += st.cpu;
        drops += n("drops");
        rss = rss.max(st.ended.rss_kib);
        let flow_new: u64 = st
            .ended
            .flow_lines
            .iter()
            .map(|f| f["new"].as_u64().unwrap_or(0))
            .sum();
        runs.push(json!({
            "sent": st.sent,
            "kernel_ground_truth": st.truth,
            "droptrace_exact_counter": n("drops"),
            "drop_lines": st.ended.drop_lines,
            "lost": n("lost"),
            "aggregated": n("aggregated"),
            "flow_lines_new_sum": flow_new,
            "flow_map_full": n("flow_map_full"),
            "accounted_exactly": n("drops") == st.truth
                && st.ended.drop_lines + n("lost") + n("aggregated") == n("drops")
                && flow_new == n("aggregated"),
            "cpu_seconds": st.cpu,
            "flood_seconds": st.secs,
        }));
    }
    let all_exact = runs.iter().all(|r| r["accounted_exactly"] == true);
    Ok((
        json!({
            "generator_threads": threads,
            "generator_rate_ratio_median": median(ratios.clone()),
            "generator_rate_ratios": ratios,
            "cpu_seconds_per_million_drops": if drops > 0 { cpu / (drops as f64 / 1e6) } else { 0.0 },
            "drops": drops,
            "all_runs_accounted_exactly": all_exact,
            "runs": runs,
            "targets": {"cpu_seconds_per_million_drops": 0.1, "generator_rate_ratio": 0.90},
        }),
        rss,
    ))
}

/// P2 and P4: the default mode in a storm from one core and from every core; then
/// `--every-drop` and the bpftrace one-liner on the same one-core flood.
fn p2_storm(bin: &Path, lab: &Lab) -> Result<(serde_json::Value, serde_json::Value)> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "P2 drop storm: default mode, {STORM_PAIRS} A/B pairs of a 2 s UDP flood from one core…"
    );
    let (one_core, rss_default) = default_storm(bin, lab, 1)?;
    eprintln!("P2 drop storm: default mode, from {cores} cores…");
    let (all_cores, _) = default_storm(bin, lab, cores)?;

    eprintln!("P2 drop storm: --every-drop, {}s flood…", FLOOD.as_secs());
    let base = flood(lab, FLOOD)?;
    let every = storm_under(bin, lab, &["--every-drop"], 1, FLOOD)?;
    let s = &every.ended.summary;
    let n = |k: &str| s[k].as_u64().unwrap_or(0);
    let events = every.ended.drop_lines;
    let rate = events as f64 / every.secs;
    let (bt_lines, bt_lost, _, bt_sent) = bpftrace_run(|| flood(lab, FLOOD), FLOOD)?;
    let bt_rate = bt_lines as f64 / FLOOD.as_secs_f64();
    let every_drop = json!({
        "sent": every.sent,
        "generator_rate_ratio": every.sent as f64 / base.max(1) as f64,
        "kernel_ground_truth": every.truth,
        "droptrace_exact_counter": n("drops"),
        "events_delivered": events,
        "events_lost": n("lost"),
        "lost_fraction": if n("drops") > 0 { n("lost") as f64 / n("drops") as f64 } else { 0.0 },
        "cpu_seconds_per_million_events": if events > 0 { every.cpu / (events as f64 / 1e6) } else { 0.0 },
        "event_rate_per_s": rate,
        "bpftrace_flood_sent": bt_sent,
        "bpftrace_lines_printed": bt_lines,
        "bpftrace_lost_reported": bt_lost,
        "bpftrace_event_rate_per_s": bt_rate,
        "rate_ratio_droptrace_over_bpftrace": if bt_rate > 0.0 { rate / bt_rate } else { f64::INFINITY },
        "targets": {"events_lost": 0, "cpu_seconds_per_million_events": 0.5, "rate_ratio": 5},
    });
    let storm = json!({
        "default_one_core": one_core,
        "default_all_cores": all_cores,
        "every_drop": every_drop,
    });
    let footprint = json!({
        "peak_rss_mib_default": rss_default as f64 / 1024.0,
        "peak_rss_mib_every_drop": every.ended.rss_kib as f64 / 1024.0,
        "targets": {"peak_rss_mib": 30},
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
    // Alternated, so both see the same machine.
    let (mut ttfv, mut bt) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let dt = start_droptrace(bin, &["--port", "5001", "--netns", &lab.host])?;
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
        let mut dt = dt;
        let pid = dt.child.id() as i32;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGINT) };
        wait_rusage(pid);
        if let Some(t) = dt.reader.take().and_then(|r| r.join().ok().flatten()) {
            ttfv.push(t.as_secs_f64());
        }
        let (_, _, bt_first, _) = bpftrace_run(|| Ok(0), Duration::from_millis(800))?;
        bt.extend(bt_first.map(|d| d.as_secs_f64()));
    }
    stop_flood.store(true, Ordering::SeqCst);
    let _ = bg.join();
    Ok(json!({
        "droptrace_runs": ttfv,
        "droptrace_median": median(ttfv.clone()),
        "bpftrace_runs": bt,
        "bpftrace_launch_to_first_output": median(bt.clone()),
        "target": "≤ bpftrace's first output",
    }))
}

pub fn run(bin: &Path, out_dir: &Path, only: &[String]) -> Result<()> {
    if let Some(bad) = only.iter().find(|p| !PHASES.contains(&p.as_str())) {
        bail!(
            "no bench phase {bad:?}: the phases are {}",
            PHASES.join(", ")
        );
    }
    for tool in ["iperf3", "bpftrace", "nstat"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()?
            .stdout
            .is_empty()
        {
            bail!("{tool} is not installed: scripts/test.sh installs it");
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
    let result = phases(bin, &lab, only);
    let _ = server.kill();
    let _ = server.wait();
    drop(lab);
    let v = result?;
    std::fs::create_dir_all(out_dir)?;
    let json_path = out_dir.join(if only.is_empty() {
        "bench.json"
    } else {
        "partial.json"
    });
    std::fs::write(&json_path, serde_json::to_string_pretty(&v)?)?;
    if only.is_empty() {
        println!("{}", table(&v));
    } else {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    if !only.is_empty() && !v["p8_per_program"].is_null() {
        println!("{}", programs::table(&v["p8_per_program"]));
    }
    eprintln!("written: {}", json_path.display());
    Ok(())
}

/// The bench's phases, as `--only` names them.
const PHASES: &[&str] = &["p1", "p2", "p3", "p5", "p6", "p7", "p8"];

/// Runs every phase (or those `only` names) in one lab; a phase left out is null.
fn phases(bin: &Path, lab: &Lab, only: &[String]) -> Result<serde_json::Value> {
    let wanted = |p: &str| only.is_empty() || only.iter().any(|o| o == p);
    let null = serde_json::Value::Null;
    let p1 = if wanted("p1") {
        p1_overhead(bin, lab)?
    } else {
        null.clone()
    };
    let (p2, p4) = if wanted("p2") {
        p2_storm(bin, lab)?
    } else {
        (null.clone(), null.clone())
    };
    let p3 = if wanted("p3") {
        p3_first_verdict(bin, lab)?
    } else {
        null.clone()
    };
    let p5 = if wanted("p5") {
        programs::p5_kernel_log(bin, lab)?
    } else {
        null.clone()
    };
    let p8 = if wanted("p8") {
        programs::p8_per_program(bin, lab)?
    } else {
        null.clone()
    };
    let p6 = if wanted("p6") {
        p6_encoders()?
    } else {
        null.clone()
    };
    let p7 = if wanted("p7") {
        p7_recorder(bin, lab)?
    } else {
        null
    };
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
        "p6_encoders": p6,
        "p7_recorder": p7,
        "p8_per_program": p8,
    }))
}

/// The recorder's idle window, and how many sysctl writes its burst makes.
const RECORDER_IDLE: Duration = Duration::from_secs(20);
const RECORDER_BURST: usize = 1000;

/// A running `droptrace record` on `journal`, once its start record is written.
fn start_recorder(bin: &Path, journal: &Path, args: &[&str]) -> Result<Stopped> {
    let child = Command::new(bin)
        .arg("record")
        .arg("--journal")
        .arg(journal)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting droptrace record")?;
    let started = journal_wait(journal, Duration::from_secs(30), |all| {
        all.iter().any(|v| v["type"] == "recorder")
    });
    let child = Stopped(child);
    started?;
    Ok(child)
}

/// The journal's records, oldest first, as the recorder wrote them.
fn journal_records(journal: &Path) -> Vec<serde_json::Value> {
    use tracer::journal::{Entry, read_all};
    read_all(journal)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| match e {
            Entry::Change(c) => serde_json::to_value(c).ok(),
            Entry::Recorder(r) => serde_json::to_value(r).ok(),
        })
        .collect()
}

/// Waits (bounded) until the journal's records satisfy `done`.
fn journal_wait(
    journal: &Path,
    limit: Duration,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Result<Vec<serde_json::Value>> {
    let deadline = Instant::now() + limit;
    loop {
        let all = journal_records(journal);
        if done(&all) {
            return Ok(all);
        }
        if Instant::now() > deadline {
            bail!(
                "the journal in {} did not show what was awaited",
                journal.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A process's status field in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// CPU seconds of a process's reaped children (cutime + cstime of /proc/PID/stat).
fn children_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: state is field 3, cutime 16, cstime 17.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (f.get(13).unwrap_or(&0) + f.get(14).unwrap_or(&0)) as f64 / hz
}

/// A child stopped with SIGTERM when dropped: on every path out of the bench, errors too.
struct Stopped(Child);

impl Stopped {
    fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// P7: what the always-on recorder costs.
fn p7_recorder(bin: &Path, lab: &Lab) -> Result<serde_json::Value> {
    eprintln!("P7 recorder: idle, fingerprints, a burst of {RECORDER_BURST} changes…");
    let journal = std::env::temp_dir().join(format!("dt-bench-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&journal);
    let result = (|| -> Result<serde_json::Value> {
        let rec = start_recorder(bin, &journal, &[])?;
        let pid = rec.id();
        std::thread::sleep(Duration::from_secs(2));
        let (c0, rss_idle) = (cpu_seconds(pid), status_kib(pid, "VmRSS:"));
        std::thread::sleep(RECORDER_IDLE);
        let idle_cpu = cpu_seconds(pid) - c0;
        let namespaces = journal_records(&journal)
            .iter()
            .find(|v| v["type"] == "recorder")
            .map_or(0, |v| v["namespaces"].as_array().map_or(0, Vec::len));

        // The burst: one shell writing a covered namespace's rp_filter, as fast as it can.
        let c0 = cpu_seconds(pid);
        let started = Instant::now();
        let script = format!(
            "i=0; while [ $i -lt {RECORDER_BURST} ]; do echo $((i % 2)) > /proc/sys/net/ipv4/conf/all/rp_filter; i=$((i+1)); done"
        );
        lab.exec(&lab.host, &["sh", "-c", &script])
            .map_err(|e| anyhow::anyhow!("burst: {e}"))?;
        let ns = lab.host.clone();
        let burst = |all: &[serde_json::Value]| {
            all.iter()
                .filter(|v| {
                    v["netns_name"] == ns.as_str() && v["key"] == "net.ipv4.conf.all.rp_filter"
                })
                .count()
        };
        let recorded = journal_wait(&journal, Duration::from_secs(60), |all| {
            burst(all) >= RECORDER_BURST
        })
        .map(|all| burst(&all))
        .unwrap_or_else(|_| burst(&journal_records(&journal)));
        let burst_secs = started.elapsed().as_secs_f64();
        let burst_cpu = cpu_seconds(pid) - c0;
        let (rss_after, peak) = (status_kib(pid, "VmRSS:"), status_kib(pid, "VmHWM:"));
        drop(rec);

        // A fingerprint: every second for 10 s, with the tools it runs (its reaped children).
        let _ = std::fs::remove_dir_all(&journal);
        let rec = start_recorder(bin, &journal, &["--fingerprint-every", "1"])?;
        let pid = rec.id();
        std::thread::sleep(Duration::from_secs(1));
        let (own0, kids0) = (cpu_seconds(pid), children_cpu_seconds(pid));
        std::thread::sleep(Duration::from_secs(10));
        let fp_cpu = cpu_seconds(pid) - own0 + children_cpu_seconds(pid) - kids0;
        drop(rec);

        // `watch`'s idle CPU over the same time, for scale.
        let watch = start_droptrace(bin, &["--port", "5000", "--netns", &lab.host])?;
        let wpid = watch.child.id();
        std::thread::sleep(Duration::from_secs(2));
        let w0 = cpu_seconds(wpid);
        std::thread::sleep(RECORDER_IDLE);
        let watch_idle = cpu_seconds(wpid) - w0;
        watch.stop()?;
        Ok(json!({
            "idle_window_s": RECORDER_IDLE.as_secs(),
            "idle_cpu_seconds": idle_cpu,
            "watch_idle_cpu_seconds": watch_idle,
            "idle_ratio_recorder_over_watch": if watch_idle > 0.0 { idle_cpu / watch_idle } else { 0.0 },
            "namespaces_covered": namespaces,
            "fingerprint_cpu_ms": fp_cpu * 1000.0 / 10.0,
            "burst_writes": RECORDER_BURST,
            "burst_recorded": recorded,
            "burst_seconds": burst_secs,
            "burst_cpu_ms_per_change": burst_cpu * 1000.0 / RECORDER_BURST as f64,
            "rss_mib_idle": rss_idle as f64 / 1024.0,
            "rss_mib_after_burst": rss_after as f64 / 1024.0,
            "peak_rss_mib": peak as f64 / 1024.0,
        }))
    })();
    let _ = std::fs::remove_dir_all(&journal);
    result
}

/// P6: what writing one drop line costs (tracer/examples/encoders.rs, built with the
/// release binary: a measure of optimized code).
fn p6_encoders() -> Result<serde_json::Value> {
    eprintln!("P6 encoders…");
    let out = Command::new("target/release/examples/encoders")
        .output()
        .context("running target/release/examples/encoders")?;
    if !out.status.success() {
        bail!("encoders: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn table(v: &serde_json::Value) -> String {
    let f = |x: &serde_json::Value| x.as_f64().map_or("-".into(), |n| format!("{n:.3}"));
    let p1 = &v["p1_overhead"];
    let (one, all, every) = (
        &v["p2_storm"]["default_one_core"],
        &v["p2_storm"]["default_all_cores"],
        &v["p2_storm"]["every_drop"],
    );
    let p3 = &v["p3_time_to_first_verdict_s"];
    let p4 = &v["p4_footprint"];
    let p5 = &v["p5_kernel_log"];
    let p6 = &v["p6_encoders"];
    let p7 = &v["p7_recorder"];
    let mut t = format!(
        "| measure | result | target |\n|---|---|---|\n\
         | P1 throughput ratio, watching the port (median of {P1_PAIRS} A/B pairs) | {} | ≥ 0.98 |\n\
         | P1 throughput ratio, watching another port | {} | ≥ 0.98 |\n\
         | P1 throughput ratio, watching the port without the forwarding hooks | {} | ≥ 0.98 |\n",
        f(&p1["ratio_watching_port_median"]),
        f(&p1["ratio_watching_other_port_median"]),
        f(&p1["ratio_watching_port_without_forwarding_hooks_median"]),
    );
    for (label, d) in [("one core", one), ("every core", all)] {
        t += &format!(
            "| P2 default mode, flood from {label}: every drop accounted (lines + lost + flows = exact = UdpNoPorts), {STORM_PAIRS} runs | {} ({} drops) | exact |\n\
             | P2 default mode, flood from {label}: droptrace CPU s per million drops | {} | ≤ 0.1 |\n\
             | P2 default mode, flood from {label}: generator rate with / without droptrace (median) | {} | ≥ 0.90 |\n",
            d["all_runs_accounted_exactly"],
            d["drops"],
            f(&d["cpu_seconds_per_million_drops"]),
            f(&d["generator_rate_ratio_median"]),
        );
    }
    t += &format!(
        "| P2 --every-drop: events delivered / lost | {} / {} | 0 lost |\n\
         | P2 --every-drop: CPU s per million events | {} | ≤ 0.5 |\n\
         | P2 --every-drop: event rate, droptrace / bpftrace one-liner | {} ({:.0}/s vs {:.0}/s) | ≥ 5× |\n\
         | P3 exec → first verdict, drops flowing (median of 3) | {} s (bpftrace launch → first line: {} s) | ≤ bpftrace |\n\
         | P4 peak RSS, default / --every-drop | {} / {} MiB | ≤ 30 MiB |\n\
         | P5 drop program ns/drop, --kernel-log off / on (median of {PAIRS} pairs) | {} ({} ns vs {} ns) | off ≤ on |\n\
         | P6 ns per JSON drop line, templated / from the record | {} / {} | ≤ 500 |\n\
         | P6 ns per human drop line, templated / from the record | {} / {} | ≤ 500 |\n\
         | P7 recorder idle: CPU s in {} s without changes (watch idle: {} s) | {} ({} of watch's) | none measurable |\n\
         | P7 recorder fingerprint of {} namespaces, with its tools (once a minute) | {} ms CPU | - |\n\
         | P7 recorder burst: sysctl writes recorded / CPU ms per change | {} of {} / {} | all |\n\
         | P7 recorder RSS idle / after the burst / peak while loading | {} / {} / {} MiB | ≤ 15 MiB |\n\
         \nmachine: {}\n",
        every["events_delivered"],
        every["events_lost"],
        f(&every["cpu_seconds_per_million_events"]),
        f(&every["rate_ratio_droptrace_over_bpftrace"]),
        every["event_rate_per_s"].as_f64().unwrap_or(0.0),
        every["bpftrace_event_rate_per_s"].as_f64().unwrap_or(0.0),
        f(&p3["droptrace_median"]),
        f(&p3["bpftrace_launch_to_first_output"]),
        f(&p4["peak_rss_mib_default"]),
        f(&p4["peak_rss_mib_every_drop"]),
        f(&p5["ratio_off_over_on_median"]),
        f(&p5["ns_per_drop_log_off_median"]),
        f(&p5["ns_per_drop_log_on_median"]),
        f(&p6["json"]["ns_per_line_templated"]),
        f(&p6["json"]["ns_per_line_from_record"]),
        f(&p6["human"]["ns_per_line_templated"]),
        f(&p6["human"]["ns_per_line_from_record"]),
        p7["idle_window_s"],
        f(&p7["watch_idle_cpu_seconds"]),
        f(&p7["idle_cpu_seconds"]),
        f(&p7["idle_ratio_recorder_over_watch"]),
        p7["namespaces_covered"],
        f(&p7["fingerprint_cpu_ms"]),
        p7["burst_recorded"],
        p7["burst_writes"],
        f(&p7["burst_cpu_ms_per_change"]),
        f(&p7["rss_mib_idle"]),
        f(&p7["rss_mib_after_burst"]),
        f(&p7["peak_rss_mib"]),
        v["machine"],
    );
    t += &programs::table(&v["p8_per_program"]);
    t
}

/// target/release/droptrace (and the encoders' bench), built first.
pub fn release_binary() -> Result<PathBuf> {
    crate::cargo(
        &[
            "build",
            "--release",
            "--locked",
            "-p",
            "tracer",
            "--bin",
            "droptrace",
            "--example",
            "encoders",
        ],
        false,
    )?;
    Ok(PathBuf::from("target/release/droptrace"))
}
