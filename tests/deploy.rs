//! What a fleet deploys: the DaemonSet, valid against the Kubernetes schema, and the image
//! built offline, run with the real dockerd exactly as the DaemonSet runs it.
mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{
    docker::DockerHost,
    recorder::{TempDir, journal_until},
};
use serde_json::Value;
use tracer::{discover::netns::Netns, lab::Outcome};

const DAEMONSET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/daemonset.yaml");

/// kubernetes-validate (PyPI; scripts/test.sh installs it) on one manifest: (passed, output).
fn kubernetes_validate(path: &std::path::Path) -> (bool, String) {
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .arg(path)
        .output()
        .expect("kubernetes-validate (scripts/test.sh installs it from PyPI)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_daemonset_is_valid_against_the_kubernetes_schema() {
    let (ok, text) = kubernetes_validate(DAEMONSET.as_ref());
    assert!(
        ok && text.contains("passed for resource daemonset/droptrace"),
        "{text}"
    );

    // The validator does check: the same manifest with a field of the wrong type fails.
    let manifest = std::fs::read_to_string(DAEMONSET).unwrap();
    assert!(manifest.contains("hostNetwork: true"));
    let bad = std::env::temp_dir().join(format!("droptrace-bad-{}.yaml", std::process::id()));
    std::fs::write(
        &bad,
        manifest.replace("hostNetwork: true", "hostNetwork: \"yes\""),
    )
    .unwrap();
    let (ok, text) = kubernetes_validate(&bad);
    let _ = std::fs::remove_file(&bad);
    assert!(!ok && text.contains("hostNetwork"), "{text}");
}

/// The capabilities the DaemonSet's watch container adds (its `add:` list), in order.
fn daemonset_capabilities() -> Vec<String> {
    container_capabilities(0)
}

/// The capabilities the DaemonSet's `n`th container adds, in order.
fn container_capabilities(n: usize) -> Vec<String> {
    let manifest = std::fs::read_to_string(DAEMONSET).unwrap();
    let mut lists = manifest.split("add:").skip(1);
    lists
        .nth(n)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| !l.trim().starts_with('#'))
        .map_while(|l| l.trim().strip_prefix("- "))
        .map(|c| c.split_whitespace().next().unwrap_or_default().to_string())
        .collect()
}

/// The DaemonSet's container, as `docker run` arguments: host network and PID namespaces,
/// every capability dropped but `caps`, a read-only root, the manifest's read-only mounts,
/// not privileged; then the image and the manifest's own arguments.
fn run_like_the_daemonset(
    host: &DockerHost,
    name: &str,
    caps: &[String],
    args: &[&str],
) -> Result<String, String> {
    run_container(host, name, caps, &[], args)
}

/// `docker run` as the DaemonSet's containers run, with `extra` arguments (a volume).
fn run_container(
    host: &DockerHost,
    name: &str,
    caps: &[String],
    extra: &[String],
    args: &[&str],
) -> Result<String, String> {
    let sock = format!("{}:/run/docker.sock:ro", host.sock.display());
    let mut run: Vec<String> = [
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "host",
        "--pid",
        "host",
        "--read-only",
        "--cap-drop",
        "ALL",
        "-v",
        "/sys/kernel/btf:/sys/kernel/btf:ro",
        "-v",
        "/sys/fs/cgroup:/sys/fs/cgroup:ro",
        "-v",
        &sock,
        "-v",
        "/run/netns:/run/netns:ro",
    ]
    .map(String::from)
    .to_vec();
    for cap in caps {
        run.extend(["--cap-add".to_string(), cap.clone()]);
    }
    run.extend(extra.iter().cloned());
    run.push("droptrace:latest".into());
    run.extend(args.iter().map(|a| a.to_string()));
    let argv: Vec<&str> = run.iter().map(String::as_str).collect();
    host.docker(&argv)
}

/// The container's JSON lines so far.
fn container_lines(host: &DockerHost, name: &str) -> Vec<Value> {
    host.docker(&["logs", name])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits (bounded) until the container printed a line `found` accepts.
fn wait_for_line(host: &DockerHost, name: &str, found: impl Fn(&Value) -> bool) -> Option<Value> {
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        if let Some(v) = container_lines(host, name).into_iter().find(|v| found(v)) {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    None
}

/// The image `cargo xtask image` builds offline, run as the DaemonSet runs it, watches the
/// ports the real dockerd publishes: a verdict, and metrics on the node's port.
#[test]
fn the_image_runs_as_the_daemonset_runs_it() {
    let host = DockerHost::start("image", true);
    host.run_web();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .args(["xtask", "image", "--docker-host"])
        .arg(&host.sock)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo xtask image");
    assert!(
        built.status.success(),
        "cargo xtask image: {}",
        String::from_utf8_lossy(&built.stderr)
    );

    let listed = daemonset_capabilities();
    assert_eq!(listed.len(), 7, "{listed:?}");
    // Debian's dockerd 20.10 does not know CAP_BPF and CAP_PERFMON by name (Docker 23 does)
    // and refuses them; the manifest's SYS_ADMIN carries their powers (the kernel accepts it
    // for both), so the container holds what the DaemonSet grants.
    assert!(listed.contains(&"SYS_ADMIN".to_string()), "{listed:?}");
    let caps: Vec<String> = listed
        .iter()
        .filter(|c| !["BPF", "PERFMON"].contains(&c.as_str()))
        .cloned()
        .collect();
    let manifest = std::fs::read_to_string(DAEMONSET).unwrap();
    for mount in [
        "/sys/kernel/btf",
        "/sys/fs/cgroup",
        "/run/docker.sock",
        "/run/netns",
    ] {
        assert!(
            manifest.contains(&format!("mountPath: {mount}, readOnly: true")),
            "{mount}"
        );
    }
    assert!(manifest.contains("privileged: false") && manifest.contains("drop: [\"ALL\"]"));
    // The manifest's own arguments.
    let args = [
        "watch",
        "--json",
        "--metrics",
        "0.0.0.0:9464",
        "--docker-host",
        "/run/docker.sock",
    ];
    assert!(manifest.contains(r#"args: ["watch", "--json", "--metrics", "0.0.0.0:9464", "--docker-host", "/run/docker.sock"]"#));
    run_like_the_daemonset(&host, "droptrace", &caps, &args)
        .unwrap_or_else(|e| panic!("docker run: {e}"));

    let start = wait_for_line(&host, "droptrace", |v| v["type"] == "start")
        .unwrap_or_else(|| panic!("no start line: {:?}", host.docker(&["logs", "droptrace"])));
    assert_eq!(start["ports"], serde_json::json!([5000]), "{start}");
    let notes = start["notes"].to_string();
    host.lab
        .sysctl(&host.lab.host, "net.ipv4.ip_forward", "0")
        .unwrap();
    assert_eq!(
        host.lab.client_request(Duration::from_secs(2)),
        Outcome::Timeout
    );
    let verdict = wait_for_line(&host, "droptrace", |v| v["type"] == "verdict")
        .unwrap_or_else(|| panic!("no verdict: {:?}", host.docker(&["logs", "droptrace"])));
    assert_eq!(verdict["cause"], "forwarding_disabled", "{verdict}");
    assert_eq!(verdict["port"], 5000, "{verdict}");
    assert_eq!(verdict["container"], "web", "{verdict}");

    // The node's metrics port, from the node's (the lab host's) network namespace.
    let ns = Netns::resolve(&host.lab.host).unwrap();
    let body = ns
        .run_in(|| {
            std::thread::sleep(Duration::from_millis(1300)); // one refresh
            common::scrape("127.0.0.1:9464", "/metrics")
        })
        .unwrap();
    assert!(
        body.lines().any(
            |l| l.starts_with("droptrace_drops_total{cause=\"forwarding_disabled\"")
                && l.contains("port=\"5000\"")
        ),
        "{body}"
    );
    host.docker(&["stop", "-t", "10", "droptrace"]).unwrap();
    let summary = wait_for_line(&host, "droptrace", |v| v["type"] == "summary")
        .expect("a summary on SIGTERM");
    assert!(summary["drops"].as_u64().unwrap() > 0, "{summary}");
    assert_eq!(
        notes, "[]",
        "with the DaemonSet's capabilities nothing is lost"
    );

    recorder_runs_as_the_daemonset_runs_it(&host);

    // Each listed capability taken away in turn: what the run loses shows it is needed. A
    // node may also hold iptables-legacy rules (older engines write them): one is added, so
    // reading them is part of the run.
    add_legacy_rule(&host.lab, 5999);
    let mut short = args.to_vec();
    short.extend(["--duration", "2"]);
    let losses: Vec<(String, Option<String>)> = caps
        .iter()
        .map(|cap| {
            let fewer: Vec<String> = caps.iter().filter(|c| *c != cap).cloned().collect();
            (
                cap.clone(),
                lost_without(&host, cap, &fewer, &short, &start),
            )
        })
        .collect();
    for (cap, lost) in &losses {
        eprintln!(
            "without {cap}: {}",
            lost.as_deref().unwrap_or("nothing lost")
        );
    }
    let unneeded: Vec<&String> = losses
        .iter()
        .filter(|(_, l)| l.is_none())
        .map(|(c, _)| c)
        .collect();
    assert!(
        unneeded.is_empty(),
        "deploy/daemonset.yaml lists capabilities droptrace runs the same without: {unneeded:?}"
    );
}

/// The DaemonSet's recorder container, with its capabilities (BPF and PERFMON through
/// SYS_ADMIN, as above) and the node's journal directory: a sysctl write on the node is in
/// the journal, with its author, and `watch` would read it there.
fn recorder_runs_as_the_daemonset_runs_it(host: &DockerHost) {
    let manifest = std::fs::read_to_string(DAEMONSET).unwrap();
    assert!(manifest.contains(r#"args: ["record", "--journal", "/var/lib/droptrace"]"#));
    assert!(manifest.contains("{name: journal, mountPath: /var/lib/droptrace, readOnly: true}"));
    let listed = container_capabilities(1);
    assert_eq!(
        listed,
        ["BPF", "PERFMON", "NET_ADMIN", "NET_RAW", "SYS_ADMIN"]
    );
    let caps: Vec<String> = listed
        .into_iter()
        .filter(|c| !["BPF", "PERFMON"].contains(&c.as_str()))
        .collect();
    let journal = host.dir.join("journal");
    let volume = format!("{}:/var/lib/droptrace", journal.display());
    let args = ["record", "--journal", "/var/lib/droptrace"];
    run_container(host, "recorder", &caps, &["-v".into(), volume], &args)
        .unwrap_or_else(|e| panic!("docker run: {e}"));
    let logs = || host.docker(&["logs", "recorder"]);
    let wait = |what: &str, found: &dyn Fn(&Value) -> bool| {
        let all = journal_until(&journal, what, |all| all.iter().any(found));
        let hit = all.into_iter().find(|v| found(v));
        hit.unwrap_or_else(|| panic!("{what}: {:?}", logs()))
    };
    let start = wait("start record", &|v| v["type"] == "recorder");
    assert_eq!(
        start["hooks"],
        serde_json::json!(["sysctl_writes", "iptables_legacy_replace", "process_exec"]),
        "{start}"
    );
    assert_eq!(start["notes"], serde_json::json!([]), "{start}");
    host.lab
        .sysctl(&host.lab.host, "net.ipv4.ip_forward", "1")
        .unwrap();
    let change = wait("sysctl write", &|v| v["key"] == "net.ipv4.ip_forward");
    assert_eq!(change["process"]["captured"], "kernel", "{change}");
    assert_eq!(change["process"]["comm"], "sysctl", "{change}");
    host.docker(&["stop", "-t", "10", "recorder"]).unwrap();
    wait("stop record", &|v| v["event"] == "stop");
}

/// What a run (`args`) with only `caps` loses against `full`, the start line of a run with
/// every capability the DaemonSet lists: a failure, notes it adds, hooks it lacks; None when
/// nothing.
fn lost_without(
    host: &DockerHost,
    cap: &str,
    caps: &[String],
    args: &[&str],
    full: &Value,
) -> Option<String> {
    let name = format!("without-{}", cap.to_lowercase().replace('_', "-"));
    run_like_the_daemonset(host, &name, caps, args).unwrap_or_else(|e| panic!("docker run: {e}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while host
        .docker(&["inspect", "-f", "{{.State.Running}}", &name])
        .is_ok_and(|r| r.trim() == "true")
    {
        assert!(Instant::now() < deadline, "{name} still runs after 60 s");
        std::thread::sleep(Duration::from_millis(250));
    }
    let code = host
        .docker(&["inspect", "-f", "{{.State.ExitCode}}", &name])
        .unwrap_or_default();
    let Some(start) = container_lines(host, &name)
        .into_iter()
        .find(|v| v["type"] == "start")
    else {
        let logs = Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", host.sock.display()))
            .args(["logs", &name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
            .unwrap_or_default();
        return Some(format!("exit {}: {logs}", code.trim()));
    };
    let list = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|x| x.as_str().unwrap_or_default().to_string())
            .collect()
    };
    let (notes, full_notes) = (list(&start["notes"]), list(&full["notes"]));
    let (signals, full_signals) = (list(&start["signals"]), list(&full["signals"]));
    let mut lost: Vec<String> = notes
        .into_iter()
        .filter(|n| !full_notes.contains(n))
        .collect();
    lost.extend(
        full_signals
            .into_iter()
            .filter(|s| !signals.contains(s))
            .map(|s| format!("hook {s} missing")),
    );
    if code.trim() != "0" {
        lost.push(format!("exit {}", code.trim()));
    }
    (!lost.is_empty()).then(|| lost.join("; "))
}

/// An iptables-legacy rule accepting `port` in the lab's host namespace (the legacy tables a
/// node of an older engine holds).
fn add_legacy_rule(lab: &tracer::lab::Lab, port: u16) {
    let port = port.to_string();
    let rule = ["-A", "INPUT", "-p", "tcp", "--dport", &port, "-j", "ACCEPT"];
    lab.exec(&lab.host, &[&["iptables-legacy"][..], &rule].concat())
        .unwrap_or_else(|e| panic!("iptables-legacy: {e}"));
}

/// A child killed when the test ends, passed or failed.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/droptrace-record.service"
);

/// The recorder's systemd unit: `systemd-analyze verify` accepts it (with the binary under
/// test and its man pages), and the recorder run with exactly the unit's capability bounding
/// set records a sysctl write, an nf_tables change and an iptables-legacy
/// replacement in a covered `ip netns` namespace, each with its author.
#[test]
fn the_recorder_unit_verifies_and_its_capabilities_suffice() {
    common::require_root();
    let unit = std::fs::read_to_string(UNIT).unwrap();
    // Removed when the test ends, passed or failed.
    let tmp = TempDir::new("unit");
    let dir = tmp.0.clone();
    std::fs::create_dir_all(dir.join("man")).unwrap();
    let pages = Command::new(&*common::DROPTRACE)
        .arg("manpages")
        .arg(dir.join("man/man1"))
        .output()
        .unwrap();
    assert!(pages.status.success());
    let copy = dir.join("droptrace-record.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/droptrace", &common::DROPTRACE),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .env("MANPATH", dir.join("man"))
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    let setting = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} missing from the unit"))
            .to_string()
    };
    let bounding: Vec<String> = setting("CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    assert_eq!(setting("LimitMEMLOCK"), "infinity");
    let exec = setting("ExecStart");
    let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    assert_eq!(args, ["record", "--journal", "/var/lib/droptrace"]);

    let lab = tracer::lab::Lab::up(tracer::lab::LabSpec::new("unit")).unwrap();
    let journal = dir.join("journal");
    // LimitMEMLOCK is not reproduced: raising it needs CAP_SYS_RESOURCE, which root lacks on
    // these machines, and kernels since 5.11 do not charge BPF memory to it.
    let mut child = KillOnDrop(
        Command::new("setpriv")
            .arg(format!("--bounding-set=-all,{}", bounding.join(",")))
            .arg("--")
            .arg(&*common::DROPTRACE)
            .args(["record", "--journal"])
            .arg(&journal)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let all = journal_until(&journal, "start record", |all| {
        all.iter().any(|v| v["type"] == "recorder")
    });
    assert_eq!(
        all[0]["hooks"],
        serde_json::json!(["sysctl_writes", "iptables_legacy_replace", "process_exec"]),
        "{:#}",
        all[0]
    );
    let covered = all[0]["namespaces"].to_string();
    assert!(covered.contains(&lab.host), "{covered}");
    lab.sysctl(&lab.host, "net.ipv4.conf.all.rp_filter", "1")
        .unwrap();
    lab.exec(&lab.host, &["nft", "add", "table", "inet", "unit_test"])
        .unwrap();
    add_legacy_rule(&lab, 5998);
    let in_lab =
        |v: &Value, source: &str| v["netns_name"] == lab.host.as_str() && v["source"] == source;
    let all = journal_until(&journal, "the three changes", |all| {
        ["sysctl", "nftables", "iptables-legacy"]
            .iter()
            .all(|s| all.iter().any(|v| in_lab(v, s)))
    });
    let of = |source: &str| all.iter().find(|v| in_lab(v, source)).unwrap();
    assert_eq!(of("sysctl")["process"]["comm"], "sysctl");
    assert_eq!(of("nftables")["process"]["comm"], "nft");
    assert_eq!(of("nftables")["what"], "add table inet unit_test");
    let legacy = of("iptables-legacy");
    assert_eq!(legacy["process"]["comm"], "iptables-legacy");
    assert!(
        legacy["changes"]
            .to_string()
            .contains("added rule filter INPUT: -p tcp"),
        "the legacy rules are read (NET_RAW): {legacy:#}"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let status = child.0.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    assert!(
        !err.contains("note:"),
        "nothing lost with the unit's capabilities: {err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
