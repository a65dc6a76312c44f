//! The README's first command on the host that has the incident: a newcomer runs the demo and
//! `watch` on a host with a live Docker (a published port) under a live firewalld, and finds
//! both exactly as they were. The demo works only in namespaces of its own and `watch` only
//! reads, so the host's ruleset (every backend), its sysctls, its links, addresses and routes,
//! its listening sockets, its daemons and the kernel's BPF objects are the same before and
//! after. The Docker host is a namespace the test made (dockerd cannot own the machine's root
//! namespace in a test); the demo runs inside it as if it were the root, and the machine's
//! real root namespace is compared too.
//!
//! One test in a binary of its own: no other test's labs or daemons come and go meanwhile.
mod common;

use std::{collections::BTreeMap, path::Path, process::Command, time::Duration};

use common::docker::DockerHost;
use tracer::discover::netns::Netns;

/// What a host's operator would notice changed. Counters and timers are left out: they move
/// on their own.
#[derive(Debug, PartialEq)]
struct HostState {
    commands: BTreeMap<String, String>,
    sysctls: BTreeMap<String, String>,
}

/// The commands whose output is the host's configuration, each without its counters.
const STATE_COMMANDS: &[&[&str]] = &[
    &["nft", "-s", "list", "ruleset"],
    &["iptables-legacy-save"],
    &["ip6tables-legacy-save"],
    &["iptables-nft-save"],
    &["ip6tables-nft-save"],
    &["ip", "-o", "link", "show"],
    &["ip", "-o", "addr", "show"],
    &["ip", "route", "show", "table", "all"],
    &["ip", "-6", "route", "show", "table", "all"],
    &["ip", "rule", "show"],
    &["ss", "-Hltnu"],
];

/// `iptables-save` prints chain counters (`[12:3456]`) and a date; IPv6 routes print their
/// remaining lifetime. Neither is configuration.
fn without_counters(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let l = match l.find(" [") {
                Some(i) if l.starts_with(':') => &l[..i],
                _ => l,
            };
            match l.find(" expires ") {
                Some(i) => l[..i].to_string(),
                None => l.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every writable sysctl under /proc/sys/net, read in the calling thread's namespace. The
/// read-only ones are counters (nf_conntrack_count) or fixed.
fn net_sysctls() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                walk(&path, out);
            } else if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o200 != 0 {
                // Write-only keys (route/flush) do not read; their absence is the same twice.
                if let Ok(value) = std::fs::read_to_string(&path) {
                    out.insert(path.display().to_string(), value.trim().to_string());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(Path::new("/proc/sys/net"), &mut out);
    out
}

/// The state of network namespace `ns` (None: the machine's root namespace).
fn snapshot(ns: Option<&str>) -> HostState {
    let mut commands = BTreeMap::new();
    for args in STATE_COMMANDS {
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}"))
                    .arg("--")
                    .args(*args);
                c
            }
            None => {
                let mut c = Command::new(args[0]);
                c.args(&args[1..]);
                c
            }
        };
        let out = cmd.output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        commands.insert(args.join(" "), without_counters(&text));
    }
    let sysctls = match ns {
        Some(ns) => Netns::resolve(ns).unwrap().run_in(net_sysctls).unwrap(),
        None => net_sysctls(),
    };
    HostState { commands, sysctls }
}

/// The kernel's BPF programs and links (machine-wide) and what is pinned in bpffs.
fn bpf_objects() -> String {
    let mut text = String::new();
    for what in ["prog", "link"] {
        let out = Command::new("bpftool")
            .args([what, "show", "-j"])
            .output()
            .expect("bpftool (scripts/test.sh installs it)");
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let mut ids: Vec<u64> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["id"].as_u64())
            .collect();
        ids.sort_unstable();
        text.push_str(&format!("{what} {ids:?}\n"));
    }
    let pinned = Command::new("find").args(["/sys/fs/bpf"]).output().unwrap();
    text + &String::from_utf8_lossy(&pinned.stdout)
}

/// Processes started since `since_ticks` (clock ticks after boot, /proc/PID/stat field 22)
/// that are still alive: a daemon the demo or watch left running. Kernel threads are not.
fn processes_started_since(since_ticks: u64) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // comm may hold spaces: the fields after it start past its closing parenthesis.
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let ppid: u64 = fields[1].parse().unwrap_or(0);
        let start: u64 = fields[19].parse().unwrap_or(0);
        if ppid != 2 && start >= since_ticks && entry.file_name() != "self" {
            found.push(stat[..=close].to_string());
        }
    }
    found.retain(|p| !p.starts_with(&format!("{} ", std::process::id())));
    found
}

fn uptime_ticks() -> u64 {
    let up = std::fs::read_to_string("/proc/uptime").unwrap();
    let secs: f64 = up.split(' ').next().unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (secs * hz) as u64
}

/// The state once it holds still: a container's veth and bridge finish IPv6 duplicate
/// address detection a second or two after it starts, and their addresses and local routes
/// appear then (`tentative` until they do). Bounded: ten seconds.
fn settled(ns: Option<&str>) -> HostState {
    let mut last = snapshot(ns);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        let now = snapshot(ns);
        let tentative = now.commands["ip -o addr show"].contains("tentative");
        if now == last && !tentative {
            return now;
        }
        last = now;
    }
    panic!("the state of {ns:?} kept changing for 10 s before the demo ran");
}

fn assert_same(what: &str, before: &HostState, after: &HostState) {
    for (cmd, was) in &before.commands {
        assert_eq!(was, &after.commands[cmd], "{what}: `{cmd}` changed");
    }
    let changed: Vec<String> = before
        .sysctls
        .iter()
        .filter(|(k, v)| after.sysctls.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: {v} -> {:?}", after.sysctls.get(k)))
        .chain(
            after
                .sysctls
                .keys()
                .filter(|k| !before.sysctls.contains_key(*k))
                .map(|k| format!("{k}: new")),
        )
        .collect();
    assert!(changed.is_empty(), "{what}: sysctls changed: {changed:#?}");
}

#[test]
fn the_demo_and_watch_leave_a_host_with_docker_and_firewalld_as_they_found_it() {
    let host = DockerHost::start_under_firewalld("hostsafe");
    host.run_web();
    let ns = host.lab.host.clone();
    let pidfile = || std::fs::read_to_string(host.dir.join("dockerd.pid")).unwrap_or_default();
    let (dockerd, firewalld) = (pidfile(), host.firewall_cmd(&["--state"]));
    assert_eq!(firewalld.as_deref().map(str::trim), Ok("running"));
    let (root_before, host_before) = (settled(None), settled(Some(&ns)));
    let bpf_before = bpf_objects();
    let since = uptime_ticks();

    // The newcomer's command, on the Docker host as its root namespace.
    let demo = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_droptrace"))
        .arg("demo")
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&demo.stdout).to_string() + &String::from_utf8_lossy(&demo.stderr);
    assert!(demo.status.success(), "the demo ran:\n{said}");
    // Then the incident command: watch the Docker host's published port for a while.
    let watch = common::run_droptrace(&[
        "watch",
        "--netns",
        &ns,
        "--docker-host",
        host.sock.to_str().unwrap(),
        "--duration",
        "3",
    ]);
    assert!(
        watch.status.success(),
        "{}",
        String::from_utf8_lossy(&watch.stderr)
    );
    // Lingering lab processes are killed as the demo ends; give the kernel a moment to reap.
    std::thread::sleep(Duration::from_millis(300));

    assert_same("the root namespace", &root_before, &snapshot(None));
    assert_same("the Docker host", &host_before, &snapshot(Some(&ns)));
    assert_eq!(
        bpf_before,
        bpf_objects(),
        "BPF programs, links or pins left behind"
    );
    let leftovers = processes_started_since(since);
    assert!(
        leftovers.is_empty(),
        "processes left running: {leftovers:?}"
    );
    // The services: the same dockerd and firewalld, still serving the published port.
    assert_eq!(pidfile(), dockerd, "dockerd was restarted");
    assert_eq!(
        host.firewall_cmd(&["--state"]).as_deref().map(str::trim),
        Ok("running")
    );
    assert_eq!(
        host.lab.client_request(Duration::from_secs(3)),
        tracer::lab::Outcome::Http(200),
        "the published port still answers"
    );
}
