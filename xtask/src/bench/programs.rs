//! The kernel side's own cost, from the kernel's per-program statistics
//! (kernel.bpf_stats_enabled, turned on for the phase and restored after): P5 (aya-log's cost
//! to the drop program) and P8 (every program's ns per run, watched and unwatched traffic,
//! beside an empty program as the floor).
use std::{collections::BTreeMap, path::Path, process::Command, time::Duration};

use anyhow::{Context, Result};
use serde_json::json;
use tracer::lab::Lab;

use super::{PAIRS, flood, flood_port, iperf_bps, median, start_droptrace};

const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Runs `f` with the kernel's per-program statistics on, restoring the setting after.
fn with_stats<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    let was = std::fs::read_to_string(STATS).unwrap_or_else(|_| "0".into());
    std::fs::write(STATS, "1").context("turning on kernel.bpf_stats_enabled")?;
    let result = f();
    let _ = std::fs::write(STATS, was.trim());
    result
}

/// A program's cumulative runs and kernel time.
#[derive(Clone, Copy, Default)]
struct Runs {
    count: u64,
    ns: u64,
}

/// Every BPF program process `pid` holds, by name (bpftool's, 15 characters at most), as the
/// fds' fdinfo counts them; programs of one name are added.
fn programs_of(pid: u32) -> BTreeMap<String, Runs> {
    let field = |info: &str, key: &str| -> Option<u64> {
        info.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
    };
    let name_of = |id: u64| -> Option<String> {
        let out = Command::new("bpftool")
            .args(["prog", "show", "id", &id.to_string(), "--json"])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["name"].as_str().map(str::to_string)
    };
    let mut ids = BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if let (Some(id), Some(count), Some(ns)) = (
            field(&info, "prog_id:"),
            field(&info, "run_cnt:"),
            field(&info, "run_time_ns:"),
        ) {
            ids.insert(id, Runs { count, ns });
        }
    }
    let mut out: BTreeMap<String, Runs> = BTreeMap::new();
    for (id, runs) in ids {
        let name = name_of(id).unwrap_or_else(|| format!("prog {id}"));
        let slot = out.entry(name).or_default();
        slot.count += runs.count;
        slot.ns += runs.ns;
    }
    out
}

/// The drop program `pid` holds (kfree_skb's) as (runs, ns per run). Not the busiest
/// program: the routing hook runs several times per dropped packet.
fn drop_program(pid: u32) -> Option<(u64, f64)> {
    programs_of(pid)
        .into_iter()
        .find(|(name, r)| name.starts_with("kfree_skb") && r.count > 0)
        .map(|(_, r)| (r.count, r.ns as f64 / r.count as f64))
}

/// P5: what aya-log costs the drop program per drop, with `--kernel-log` off (the default:
/// one check per report site) and on, alternated in the same storm.
pub fn p5_kernel_log(bin: &Path, lab: &Lab) -> Result<serde_json::Value> {
    eprintln!("P5 aya-log cost: {PAIRS} off/on pairs of a 1 s flood…");
    with_stats(|| {
        let per_drop = |extra: &[&str]| -> Result<Option<f64>> {
            let mut args = vec!["--port", "5001", "--netns", lab.host.as_str()];
            args.extend(extra);
            let dt = start_droptrace(bin, &args)?;
            flood(lab, Duration::from_secs(1))?;
            let busiest = drop_program(dt.child.id());
            dt.stop()?;
            Ok(busiest.map(|(_, ns)| ns))
        };
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
    })
}

/// The empty `bench_floor` program from droptrace's own object, attached to kfree_skb for as
/// long as the returned object lives.
fn attach_floor() -> Result<aya::Ebpf> {
    let mut ebpf =
        aya::Ebpf::load(tracer::load::ebpf::object()).context("loading droptrace's object")?;
    let btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
    let prog: &mut aya::programs::BtfTracePoint = ebpf
        .program_mut("bench_floor")
        .context("the object has no bench_floor program")?
        .try_into()
        .context("bench_floor is not a tp_btf program")?;
    prog.load("kfree_skb", &btf)
        .context("loading bench_floor")?;
    prog.attach().context("attaching bench_floor")?;
    Ok(ebpf)
}

/// Each program's ns per run over one phase (the difference of two readings).
fn per_run(before: &BTreeMap<String, Runs>, after: &BTreeMap<String, Runs>) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (name, a) in after {
        let b = before.get(name).copied().unwrap_or_default();
        let runs = a.count.saturating_sub(b.count);
        let ns = a.ns.saturating_sub(b.ns);
        if runs > 0 {
            out.insert(
                name.clone(),
                json!({"runs": runs, "ns_per_run": ns as f64 / runs as f64}),
            );
        }
    }
    serde_json::Value::Object(out)
}

/// P8: every program's ns per run, watching port 5001: on traffic it does not watch (iperf3
/// to 5000 through DNAT and FORWARD; a flood of drops to port 5002) and on watched drops (a
/// flood to 5001), with the empty floor program attached throughout.
pub fn p8_per_program(bin: &Path, lab: &Lab) -> Result<serde_json::Value> {
    eprintln!("P8 per program: unwatched forwarding, unwatched drops, watched drops…");
    with_stats(|| {
        let floor = attach_floor()?;
        let me = std::process::id();
        let dt = start_droptrace(bin, &["--port", "5001", "--netns", lab.host.as_str()])?;
        let pid = dt.child.id();
        let read = || {
            let mut all = programs_of(pid);
            all.extend(
                programs_of(me)
                    .into_iter()
                    .filter(|(n, _)| n == "bench_floor"),
            );
            all
        };
        let t0 = read();
        iperf_bps(lab)?;
        let t1 = read();
        flood_port(lab, Duration::from_secs(2), 1, 5002)?;
        let t2 = read();
        flood_port(lab, Duration::from_secs(2), 1, 5001)?;
        let t3 = read();
        dt.stop()?;
        drop(floor);
        Ok(json!({
            "unwatched_forwarding": per_run(&t0, &t1),
            "unwatched_drops": per_run(&t1, &t2),
            "watched_drops": per_run(&t2, &t3),
            "floor_program": "bench_floor (empty tp_btf on kfree_skb)",
            "targets_ns": {"unwatched": 25, "watched_drop": 120},
        }))
    })
}

/// P8 as a table: one row per program, ns per run (and runs) in each phase; the floor first.
pub fn table(p8: &serde_json::Value) -> String {
    let phases = ["unwatched_forwarding", "unwatched_drops", "watched_drops"];
    let mut names: Vec<String> = phases
        .iter()
        .filter_map(|ph| p8[*ph].as_object())
        .flat_map(|m| m.keys().cloned())
        .collect();
    names.sort_by_key(|n| (n != "bench_floor", n.clone()));
    names.dedup();
    let mut t = String::from(
        "\nP8 ns per run (runs), watching port 5001 (target: ≤ 25 unwatched, ≤ 120 per watched drop)\n\n\
         | program | unwatched: iperf3 to 5000 | unwatched: drops to 5002 | watched: drops to 5001 |\n|---|---|---|---|\n",
    );
    for name in names {
        let cell = |ph: &str| {
            let c = &p8[ph][&name];
            match (c["ns_per_run"].as_f64(), c["runs"].as_u64()) {
                (Some(ns), Some(runs)) => format!("{ns:.0} ({runs})"),
                _ => "-".into(),
            }
        };
        t += &format!(
            "| {name} | {} | {} | {} |\n",
            cell(phases[0]),
            cell(phases[1]),
            cell(phases[2])
        );
    }
    t
}
