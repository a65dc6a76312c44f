//! Shared harness of the integration tests: runs the real `droptrace` binary against the
//! real kernel while the lab (tracer::lab) makes real packets cross real namespaces.
#![allow(dead_code)]

pub mod docker;
pub mod netavark;
pub mod podman;
pub mod recorder;

use std::{
    io::{BufRead, BufReader, Read},
    os::unix::fs::MetadataExt,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;

/// The binary under test: the one cargo built with these tests, or the one named by
/// DROPTRACE_BIN (the kernel matrix runs these tests in guests against the static
/// `target/dist/droptrace`).
pub static DROPTRACE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    std::env::var("DROPTRACE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_droptrace").into())
});

/// The tests need root (eBPF, namespaces). Fail loudly instead of passing vacuously.
/// A command line's words: `words("-I INPUT -j DROP")` for an argument vector.
pub fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// The run's final verdicts (one per port and cause).
pub fn final_verdicts(out: &Output) -> Vec<&Value> {
    out.of_type("verdict")
        .into_iter()
        .filter(|v| v["final"] == true)
        .collect()
}

/// The run's one final verdict.
pub fn one_verdict(out: &Output) -> Value {
    let finals = final_verdicts(out);
    assert_eq!(finals.len(), 1, "one verdict: {}", out.dump());
    finals[0].clone()
}

/// `droptrace check --netns NS --port PORT --json`: its exit status and its finding of
/// `cause` (panics, saying what it printed, when there is none).
pub fn check_finding(netns: &str, port: u16, cause: &str) -> (Option<i32>, Value) {
    let port = port.to_string();
    let check = run_droptrace(&["check", "--netns", netns, "--port", &port, "--json"]);
    let text = String::from_utf8_lossy(&check.stdout);
    let finding = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|f| f["cause"] == cause)
        .unwrap_or_else(|| panic!("a {cause} finding: {text}"));
    (check.status.code(), finding)
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the integration tests load eBPF programs and build network namespaces: run them as root"
    );
}

/// What the running kernel itself offers, read from its BTF (not from droptrace's output):
/// some evidence exists only on newer kernels, and the kernel matrix runs these tests on
/// Debian 12's 6.1 as well as on newer ones.
pub mod kernel {
    use tracer::load::kernel::btf::KernelBtf;

    fn btf() -> KernelBtf {
        KernelBtf::from_sys().expect("the tests need the kernel's BTF")
    }

    /// tcp_send_reset fires for RSTs answering closed ports (it gained its reason argument
    /// with that change, Linux 6.10).
    pub fn reports_rsts_for_closed_ports() -> bool {
        btf()
            .tracepoint_args("tcp_send_reset")
            .is_some_and(|args| args.len() >= 3)
    }

    /// BPF_PROG_TYPE_NETFILTER links (Linux 6.4): the netfilter hook probes can attach.
    pub fn has_netfilter_links() -> bool {
        btf().has_type("bpf_nf_link")
    }

    /// The BTF-typed tracepoints of the routing decision and of transmission.
    pub fn has_forwarding_tracepoints() -> bool {
        let btf = btf();
        btf.tracepoint_args("fib_table_lookup").is_some()
            && btf.tracepoint_args("fib6_table_lookup").is_some()
            && btf.tracepoint_args("net_dev_queue").is_some()
    }

    /// `enum skb_drop_reason` (Linux 5.17): drops carry the kernel's own reason.
    pub fn has_drop_reasons() -> bool {
        btf().has_type("skb_drop_reason")
    }
}

/// A drop line's reason is `want`: the kernel's own, or on a kernel without drop reasons,
/// null with `inferred_reason` naming `want` (and the start line saying so).
pub fn assert_reason(drop: &Value, want: &str) {
    if kernel::has_drop_reasons() {
        assert_eq!(drop["reason"], want, "reason of {drop}");
    } else {
        assert_eq!(drop["reason"], Value::Null, "{drop}");
        assert_eq!(
            drop["inferred_reason"]["reason"], want,
            "inferred reason of {drop}"
        );
    }
}

/// The summary's flow record of watched port `port` over TCP, when the start line says the
/// forwarding hooks loaded (`forwarded_packets`, `routing_decisions`); None when they did not.
pub fn flow_of(out: &Output, port: u16) -> Option<Value> {
    let signals = out.of_type("start")[0]["signals"].to_string();
    if !signals.contains("forwarded_packets") || !signals.contains("routing_decisions") {
        assert!(
            !kernel::has_forwarding_tracepoints(),
            "this kernel has fib_table_lookup and net_dev_queue: the hooks must load: {signals}"
        );
        return None;
    }
    let flows = out.summary()["flows"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Some(
        flows
            .into_iter()
            .find(|f| f["port"] == port && f["proto"] == "tcp")
            .unwrap_or_else(|| serde_json::json!({"port": port, "forwarded": 0, "dropped": 0, "routed_forward": 0, "routed_local": 0})),
    )
}

/// The reason the kernel's exact counters (summary, metrics) file `reason`'s drops under:
/// on a kernel without drop reasons they cannot be split by reason.
pub fn counted_as(reason: &str) -> &str {
    if kernel::has_drop_reasons() {
        reason
    } else {
        "UNREPORTED"
    }
}

/// nsfs inode of a named namespace, as droptrace reports it in `netns`.
pub fn netns_inode(name: &str) -> u64 {
    std::fs::metadata(format!("/run/netns/{name}"))
        .unwrap_or_else(|e| panic!("/run/netns/{name}: {e}"))
        .ino()
}

/// iptables arguments that remove Docker's nat DOCKER chain the way `iptables -F`/`-X` after
/// a firewall reload leaves it: unhooked from PREROUTING and OUTPUT, flushed, deleted.
pub const DELETE_DOCKER_NAT_CHAIN: &[&[&str]] = &[
    &[
        "-t",
        "nat",
        "-D",
        "PREROUTING",
        "-m",
        "addrtype",
        "--dst-type",
        "LOCAL",
        "-j",
        "DOCKER",
    ],
    &[
        "-t",
        "nat",
        "-D",
        "OUTPUT",
        "!",
        "-d",
        "127.0.0.0/8",
        "-m",
        "addrtype",
        "--dst-type",
        "LOCAL",
        "-j",
        "DOCKER",
    ],
    &["-t", "nat", "-F", "DOCKER"],
    &["-t", "nat", "-X", "DOCKER"],
];

/// A running `droptrace watch --json`.
pub struct Watch {
    child: Option<Child>,
    lines: Receiver<String>,
    reader: Option<JoinHandle<()>>,
    pub start: Value,
    early: Vec<String>,
}

pub struct Output {
    pub records: Vec<Value>,
    pub status: ExitStatus,
    pub stderr: String,
}

impl Output {
    pub fn of_type(&self, kind: &str) -> Vec<&Value> {
        self.records.iter().filter(|r| r["type"] == kind).collect()
    }

    pub fn drops(&self) -> Vec<&Value> {
        self.of_type("drop")
    }

    pub fn summary(&self) -> &Value {
        let all = self.of_type("summary");
        assert_eq!(
            all.len(),
            1,
            "expected exactly one summary line, got:\n{}",
            self.dump()
        );
        all[0]
    }

    /// A readable dump for assertion messages.
    pub fn dump(&self) -> String {
        let mut text: Vec<String> = self.records.iter().map(|r| r.to_string()).collect();
        text.push(format!("stderr: {}", self.stderr));
        text.join("\n")
    }
}

impl Watch {
    /// Starts `droptrace watch --json ARGS…` and waits until it reports it is attached.
    pub fn start(args: &[&str]) -> Watch {
        Self::start_env(args, &[])
    }

    /// Like `start`, with extra environment variables for droptrace.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Watch {
        require_root();
        let mut cmd = Command::new(&*DROPTRACE);
        cmd.arg("watch").arg("--json").args(args);
        cmd.envs(env.iter().copied());
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn droptrace");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut watch = Watch {
            child: Some(child),
            lines: rx,
            reader: Some(reader),
            start: Value::Null,
            early: Vec::new(),
        };
        // Loading takes about a second on a host; an emulated guest sharing its CPU with a
        // build has taken over 20.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match watch.lines.recv_timeout(left) {
                Ok(line) => {
                    let v: Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                    if v["type"] == "start" {
                        watch.start = v;
                        break;
                    }
                    watch.early.push(line);
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    let out = watch.finish();
                    panic!("droptrace did not start: {}", out.dump());
                }
            }
        }
        watch
    }

    /// Ctrl-C, then everything it printed.
    pub fn stop(self) -> Output {
        self.stop_with(libc::SIGINT)
    }

    /// Ends the run with `signal`, then everything it printed.
    pub fn stop_with(mut self, signal: i32) -> Output {
        if let Some(child) = &self.child {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
        self.finish()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Waits for exit (bounded), then collects stdout/stderr.
    fn finish(&mut self) -> Output {
        let mut child = self.child.take().expect("child");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break child.wait().expect("wait after kill");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let mut stderr = String::new();
        if let Some(mut err) = child.stderr.take() {
            let _ = err.read_to_string(&mut stderr);
        }
        let mut lines: Vec<String> = std::mem::take(&mut self.early);
        if !self.start.is_null() {
            lines.insert(0, self.start.to_string());
        }
        lines.extend(self.lines.try_iter());
        let records = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        Output {
            records,
            status,
            stderr,
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs droptrace to completion with the given arguments (for error cases).
pub fn run_droptrace(args: &[&str]) -> std::process::Output {
    Command::new(&*DROPTRACE)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run droptrace")
}

/// One HTTP GET of `path` on `addr` (droptrace's metrics endpoint), answer read within 5 s.
pub fn scrape(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics address");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

/// Sends `n` UDP datagrams from one client socket to the host's closed port 5001: each is a
/// NO_SOCKET drop in the host, all of one flow.
pub fn udp_burst(lab: &tracer::lab::Lab, n: u64) {
    use std::net::{IpAddr, SocketAddr, UdpSocket};
    let ns = tracer::discover::netns::Netns::resolve(&lab.ext).unwrap();
    ns.run_in(move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        let to = SocketAddr::new(IpAddr::V4(tracer::lab::HOST_ADDR), 5001);
        for _ in 0..n {
            sock.send_to(b"storm", to).unwrap();
        }
    })
    .unwrap();
}

/// Whether the run's start line lists `signal` among the hooks that attached.
pub fn attached(out: &Output, signal: &str) -> bool {
    out.of_type("start")[0]["signals"]
        .as_array()
        .is_some_and(|s| s.iter().any(|x| x == signal))
}

/// On a kernel that refuses cgroup/sysctl (Debian 11's 5.10 does), a sysctl's author cannot
/// be recorded: the start line says why, and the verdict says so instead of guessing.
pub fn assert_sysctl_author_unrecordable(out: &Output) {
    let notes = out.of_type("start")[0]["notes"].to_string();
    assert!(notes.contains("cgroup/sysctl unavailable"), "{notes}");
    let v = out
        .of_type("verdict")
        .into_iter()
        .find(|v| v["final"] == true && v["cause"] == "forwarding_disabled")
        .unwrap_or_else(|| panic!("no final forwarding_disabled verdict: {}", out.dump()));
    assert!(v["culprit"].is_null(), "{v:#}");
    let note = v["culprit_note"].as_str().unwrap_or_default();
    assert!(note.contains("cannot be recorded on this kernel"), "{note}");
}

/// Saves a real engine's output as a fixture when `DROPTRACE_FIXTURES` names a directory
/// (`cargo xtask vm --distro` sets it in its guests and brings the files back to
/// target/vm/fixtures/SUITE/): the fixtures the parsers' tests and fuzz seeds come from.
pub fn save_fixture(name: &str, body: &str) {
    if let Ok(dir) = std::env::var("DROPTRACE_FIXTURES") {
        let path = std::path::Path::new(&dir).join(name);
        std::fs::write(&path, body).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// `GET path` on an engine's unix socket (HTTP/1.0: no chunking), the body.
pub fn engine_get(sock: &std::path::Path, path: &str) -> String {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(sock)
        .unwrap_or_else(|e| panic!("{}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: engine\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("engine answer");
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_else(|| panic!("no HTTP body: {text}"))
}

/// Saves the engine's container list and namespace `ns`'s rules (`iptables-save`,
/// `nft -j list ruleset`) as fixtures named `{prefix}-…`.
pub fn save_engine_fixtures(lab: &tracer::lab::Lab, sock: &std::path::Path, prefix: &str) {
    if std::env::var_os("DROPTRACE_FIXTURES").is_none() {
        return;
    }
    let api = engine_get(sock, "/v1.41/containers/json");
    save_fixture(&format!("{prefix}-containers.json"), &api);
    let save = lab.exec(&lab.host, &["iptables-save"]).unwrap_or_default();
    save_fixture(&format!("{prefix}-iptables-save.txt"), &save);
    let nft = lab
        .exec(&lab.host, &["nft", "-j", "list", "ruleset"])
        .unwrap_or_default();
    save_fixture(&format!("{prefix}-nft-list-ruleset.json"), &nft);
}
