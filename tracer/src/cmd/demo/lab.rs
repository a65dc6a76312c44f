//! The namespace lab: a remote client, a Docker-like host and a container, wired the way
//! Docker wires a published port. The integration tests and `droptrace demo` both build it
//! from here, so what the demo shows is what the tests prove.
//!
//! ```text
//!  ext (client)                host (plays the Docker host)                 ctr (container)
//!  eth0 198.51.100.2/24 ─veth─ eth-ext 198.51.100.1/24
//!       2001:db8:1::2/64              2001:db8:1::1/64
//!                              docker0 172.17.0.1/16 (bridge) ─ veth-ctr ─veth─ eth0 172.17.0.2/16
//!                                                                               httpd on :PORT
//! ```
//! Every name carries a per-lab tag so labs can run in parallel; dropping the `Lab` kills its
//! processes and deletes its namespaces, also when a test panics.
use std::{
    fmt,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::discover::netns::Netns;

/// Prefix of every namespace a lab creates; `cleanup_stale` removes leftovers by it.
pub const NS_PREFIX: &str = "dtlab-";

pub const EXT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const BRIDGE_ADDR: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 1);
pub const CTR_ADDR: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 2);
pub const EXT_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
pub const HOST_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// The container's IPv6 address on docker0 (`LabSpec::ipv6`), as Docker's `fixed-cidr-v6`.
pub const CTR_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x17, 0, 0, 0, 0, 0, 2);
/// The host's interface towards the client.
pub const HOST_EXT_IF: &str = "eth-ext";
pub const BRIDGE: &str = "docker0";

/// Which iptables the host's Docker rules are written with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// iptables-nft (Debian's default `iptables`): rules live in nf_tables.
    IptablesNft,
    /// iptables-legacy: x_tables, as on older hosts.
    IptablesLegacy,
}

impl Backend {
    pub fn iptables(self) -> &'static str {
        match self {
            Backend::IptablesNft => "iptables-nft",
            Backend::IptablesLegacy => "iptables-legacy",
        }
    }

    fn restore(self, ipv6: bool) -> &'static str {
        match (self, ipv6) {
            (Backend::IptablesNft, false) => "iptables-nft-restore",
            (Backend::IptablesLegacy, false) => "iptables-legacy-restore",
            (Backend::IptablesNft, true) => "ip6tables-nft-restore",
            (Backend::IptablesLegacy, true) => "ip6tables-legacy-restore",
        }
    }
}

#[derive(Clone, Debug)]
pub struct LabSpec {
    /// Short label for names and messages (the test's name, "demo").
    pub label: String,
    /// The published port (host port = container port, as `-p 5000:5000`).
    pub port: u16,
    pub backend: Backend,
    /// Start the HTTP server in the container.
    pub server: bool,
    /// Build the docker0 bridge, the container and Docker's rules by hand. Off when a real
    /// dockerd runs in the host namespace and does all of that itself.
    pub docker_by_hand: bool,
    /// Also publish the port over IPv6, as dockerd with `ipv6` and `ip6tables` on: the
    /// container gets CTR_ADDR6 and ip6tables DNAT the host's IPv6 address to it.
    pub ipv6: bool,
}

impl LabSpec {
    pub fn new(label: &str) -> Self {
        Self {
            label: label.to_string(),
            port: 5000,
            backend: Backend::IptablesNft,
            server: true,
            docker_by_hand: true,
            ipv6: false,
        }
    }
}

/// What a client saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Connected and got an HTTP status.
    Http(u16),
    /// Connected, but no HTTP answer.
    Connected,
    /// RST: nothing listens (ECONNREFUSED).
    Refused,
    /// ICMP unreachable (EHOSTUNREACH / ENETUNREACH), e.g. a REJECT.
    Unreachable(String),
    /// No answer at all: a silent drop.
    Timeout,
    Other(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Http(code) => write!(f, "HTTP {code}"),
            Outcome::Connected => write!(f, "connected, no HTTP answer"),
            Outcome::Refused => write!(f, "connection refused"),
            Outcome::Unreachable(why) => write!(f, "ICMP unreachable ({why})"),
            Outcome::Timeout => write!(f, "timed out"),
            Outcome::Other(why) => write!(f, "failed ({why})"),
        }
    }
}

#[derive(Debug)]
pub struct LabError(pub String);

impl fmt::Display for LabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LabError {}

pub type Result<T> = std::result::Result<T, LabError>;

/// Runs a command (an argument vector, never a shell line) and returns its stdout.
pub fn run(args: &[&str]) -> Result<String> {
    run_with_input(args, None)
}

pub fn run_with_input(args: &[&str], input: Option<&str>) -> Result<String> {
    let (prog, rest) = args
        .split_first()
        .ok_or_else(|| LabError("empty command".into()))?;
    let mut cmd = Command::new(prog);
    cmd.args(rest)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        LabError(format!(
            "cannot run {prog}: {e} (is it installed? scripts/setup.sh installs the lab's tools)"
        ))
    })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| LabError(format!("{prog}: writing stdin: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| LabError(format!("{prog}: {e}")))?;
    if !out.status.success() {
        return Err(LabError(format!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

static SEQ: AtomicU32 = AtomicU32::new(0);

pub struct Lab {
    pub spec: LabSpec,
    /// Namespace names (under /run/netns).
    pub ext: String,
    pub host: String,
    pub ctr: String,
    made: Vec<String>,
    server: Option<Child>,
    webroot: Option<PathBuf>,
}

impl Lab {
    /// Builds the whole lab; on any failure what was already made is removed.
    pub fn up(spec: LabSpec) -> Result<Lab> {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let label: String = spec
            .label
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(16)
            .collect();
        let tag = format!("{label}-{}-{seq}", std::process::id());
        let mut lab = Lab {
            ext: format!("{NS_PREFIX}{tag}-ext"),
            host: format!("{NS_PREFIX}{tag}-host"),
            ctr: format!("{NS_PREFIX}{tag}-ctr"),
            spec,
            made: Vec::new(),
            server: None,
            webroot: None,
        };
        lab.build()?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<()> {
        for ns in [self.ext.clone(), self.host.clone(), self.ctr.clone()] {
            run(&["ip", "netns", "add", &ns])?;
            self.made.push(ns.clone());
            self.ip(&ns, &["link", "set", "lo", "up"])?;
        }
        let (ext, host, ctr) = (self.ext.clone(), self.host.clone(), self.ctr.clone());

        // client <-> host
        self.ip(
            &host,
            &[
                "link",
                "add",
                HOST_EXT_IF,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &ext,
            ],
        )?;
        self.ip(
            &host,
            &["addr", "add", "198.51.100.1/24", "dev", HOST_EXT_IF],
        )?;
        self.ip(
            &host,
            &[
                "addr",
                "add",
                "2001:db8:1::1/64",
                "dev",
                HOST_EXT_IF,
                "nodad",
            ],
        )?;
        self.ip(&host, &["link", "set", HOST_EXT_IF, "up"])?;
        self.ip(&ext, &["addr", "add", "198.51.100.2/24", "dev", "eth0"])?;
        self.ip(
            &ext,
            &["addr", "add", "2001:db8:1::2/64", "dev", "eth0", "nodad"],
        )?;
        self.ip(&ext, &["link", "set", "eth0", "up"])?;

        if !self.spec.docker_by_hand {
            return Ok(());
        }
        // host bridge <-> container
        self.ip(&host, &["link", "add", BRIDGE, "type", "bridge"])?;
        self.ip(&host, &["addr", "add", "172.17.0.1/16", "dev", BRIDGE])?;
        self.ip(&host, &["link", "set", BRIDGE, "up"])?;
        self.ip(
            &host,
            &[
                "link", "add", "veth-ctr", "type", "veth", "peer", "name", "eth0", "netns", &ctr,
            ],
        )?;
        self.ip(&host, &["link", "set", "veth-ctr", "master", BRIDGE, "up"])?;
        self.ip(&ctr, &["addr", "add", "172.17.0.2/16", "dev", "eth0"])?;
        self.ip(&ctr, &["link", "set", "eth0", "up"])?;
        self.ip(&ctr, &["route", "add", "default", "via", "172.17.0.1"])?;

        self.sysctl(&host, "net.ipv4.ip_forward", "1")?;
        self.load_docker_rules()?;
        if self.spec.ipv6 {
            self.publish_ipv6()?;
        }
        if self.spec.server {
            self.start_server()?;
            if self.spec.ipv6 {
                self.wait_for_ipv6()?;
            }
        }
        Ok(())
    }

    /// Waits until the client reaches the published port over IPv6 (DNAT, forwarding, the
    /// bridge): under load the first IPv6 exchanges of fresh interfaces (neighbour discovery)
    /// took more than a client's 2 s now and then.
    fn wait_for_ipv6(&self) -> Result<()> {
        let target = SocketAddr::new(IpAddr::V6(HOST_ADDR6), self.spec.port);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.request(&self.ext, target, Duration::from_secs(1)) {
                Outcome::Http(_) => return Ok(()),
                other if Instant::now() > deadline => {
                    return Err(LabError(format!(
                        "the published port never answered over IPv6: {other}"
                    )));
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// `ip -n NS ARGS…`
    pub fn ip(&self, ns: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "-n", ns];
        full.extend_from_slice(args);
        run(&full)
    }

    /// `ip netns exec NS ARGS…`: a real process inside the namespace.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        run(&full)
    }

    pub fn exec_with_input(&self, ns: &str, args: &[&str], input: &str) -> Result<String> {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        run_with_input(&full, Some(input))
    }

    /// `sysctl -w KEY=VALUE` inside a namespace (as an operator or a script would).
    pub fn sysctl(&self, ns: &str, key: &str, value: &str) -> Result<()> {
        self.exec(ns, &["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// `iptables ARGS…` in the host namespace with the lab's backend.
    pub fn iptables(&self, args: &[&str]) -> Result<String> {
        let mut full = vec![self.spec.backend.iptables()];
        full.extend_from_slice(args);
        self.exec(&self.host.clone(), &full)
    }

    /// The rules dockerd 20.10 writes for `docker run -p PORT:PORT` on the default bridge
    /// (captured from a real dockerd, see shared/design.md).
    pub fn docker_rules(&self) -> String {
        let p = self.spec.port;
        format!(
            "*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A POSTROUTING -s 172.17.0.2/32 -d 172.17.0.2/32 -p tcp -m tcp --dport {p} -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport {p} -j DNAT --to-destination 172.17.0.2:{p}
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport {p} -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
"
        )
    }

    pub fn load_docker_rules(&self) -> Result<()> {
        let rules = self.docker_rules();
        self.exec_with_input(&self.host, &[self.spec.backend.restore(false)], &rules)
            .map(|_| ())
    }

    /// The container's IPv6 side and Docker's ip6tables rules for it (dockerd 20.10 with
    /// `"ipv6": true, "ip6tables": true, "fixed-cidr-v6": "fd00:17::/64"`).
    fn publish_ipv6(&self) -> Result<()> {
        let (host, ctr) = (&self.host, &self.ctr);
        self.ip(
            host,
            &["addr", "add", "fd00:17::1/64", "dev", BRIDGE, "nodad"],
        )?;
        self.ip(
            ctr,
            &["addr", "add", "fd00:17::2/64", "dev", "eth0", "nodad"],
        )?;
        self.ip(ctr, &["-6", "route", "add", "default", "via", "fd00:17::1"])?;
        self.sysctl(host, "net.ipv6.conf.all.forwarding", "1")?;
        let p = self.spec.port;
        let rules = format!(
            "*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d ::1/128 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s fd00:17::/64 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport {p} -j DNAT --to-destination [fd00:17::2]:{p}
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER -d fd00:17::2/128 ! -i docker0 -o docker0 -p tcp -m tcp --dport {p} -j ACCEPT
-A DOCKER-USER -j RETURN
COMMIT
"
        );
        self.exec_with_input(host, &[self.spec.backend.restore(true)], &rules)
            .map(|_| ())
    }

    fn start_server(&mut self) -> Result<()> {
        self.start_server_at(CTR_ADDR)
    }

    /// Starts the HTTP server in the container namespace on the spec's port, and waits until
    /// the host reaches it at `ctr_addr` (for containers an engine addressed itself).
    pub fn start_server_at(&mut self, ctr_addr: Ipv4Addr) -> Result<()> {
        let root = std::env::temp_dir().join(format!("{}-www", self.ctr));
        std::fs::create_dir_all(&root).map_err(|e| LabError(format!("{}: {e}", root.display())))?;
        std::fs::write(root.join("index.html"), "droptrace lab\n")
            .map_err(|e| LabError(format!("{}: {e}", root.display())))?;
        self.webroot = Some(root.clone());
        let port = self.spec.port.to_string();
        let root_arg = root.to_string_lossy().into_owned();
        let child = Command::new("ip")
            .args([
                "netns", "exec", &self.ctr, "busybox", "httpd", "-f", "-p", &port, "-h", &root_arg,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                LabError(format!(
                    "cannot start busybox httpd: {e} (apt-get install busybox-static)"
                ))
            })?;
        self.server = Some(child);
        // Ready when the host itself can reach it over the bridge (no DNAT, no forwarding).
        let target = SocketAddr::new(IpAddr::V4(ctr_addr), self.spec.port);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.request(&self.host, target, Duration::from_millis(300)) {
                Outcome::Http(_) => return Ok(()),
                other if Instant::now() > deadline => {
                    return Err(LabError(format!(
                        "the lab's httpd did not come up: {other}"
                    )));
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// An HTTP GET from inside namespace `from`, reporting what the client saw.
    pub fn request(&self, from: &str, target: SocketAddr, timeout: Duration) -> Outcome {
        self.request_from(from, None, target, timeout)
    }

    /// Like `request`, with the client socket bound to `source` first.
    pub fn request_from(
        &self,
        from: &str,
        source: Option<IpAddr>,
        target: SocketAddr,
        timeout: Duration,
    ) -> Outcome {
        let ns = match Netns::resolve(from) {
            Ok(ns) => ns,
            Err(e) => return Outcome::Other(e.to_string()),
        };
        ns.run_in(move || http_get(source, target, timeout))
            .unwrap_or_else(|e| Outcome::Other(format!("entering {from}: {e}")))
    }

    /// What a remote client sees on the published port (IPv4).
    pub fn client_request(&self, timeout: Duration) -> Outcome {
        self.request(
            &self.ext,
            SocketAddr::new(IpAddr::V4(HOST_ADDR), self.spec.port),
            timeout,
        )
    }

    /// Path that `droptrace --netns` accepts for the host namespace.
    pub fn host_netns_path(&self) -> String {
        format!("/run/netns/{}", self.host)
    }

    fn teardown(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.made.drain(..).rev() {
            kill_namespace(&ns);
        }
        if let Some(root) = self.webroot.take() {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Kills whatever still runs inside a namespace.
pub fn kill_namespace_processes(ns: &str) {
    if let Ok(pids) = run(&["ip", "netns", "pids", ns]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: sending a signal has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Kills whatever still runs inside a namespace, then deletes it.
pub fn kill_namespace(ns: &str) {
    kill_namespace_processes(ns);
    let _ = run(&["ip", "netns", "del", ns]);
}

/// Removes namespaces left by labs whose process died before cleaning up.
pub fn cleanup_stale() -> Vec<String> {
    let Ok(list) = run(&["ip", "netns", "list"]) else {
        return Vec::new();
    };
    let stale: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(NS_PREFIX))
        .map(str::to_string)
        .collect();
    for ns in &stale {
        kill_namespace(ns);
    }
    stale
}

fn connect(
    source: Option<IpAddr>,
    target: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect_timeout(&target, timeout);
    };
    let domain = socket2::Domain::for_address(target);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    sock.bind(&SocketAddr::new(source, 0).into())?;
    sock.connect_timeout(&target.into(), timeout)?;
    Ok(sock.into())
}

fn http_get(source: Option<IpAddr>, target: SocketAddr, timeout: Duration) -> Outcome {
    let mut stream = match connect(source, target, timeout) {
        Ok(s) => s,
        Err(e) => {
            return match e.raw_os_error() {
                Some(libc::ECONNREFUSED) => Outcome::Refused,
                Some(libc::EHOSTUNREACH) => Outcome::Unreachable("no route to host".into()),
                Some(libc::ENETUNREACH) => Outcome::Unreachable("network unreachable".into()),
                Some(libc::EACCES) => Outcome::Unreachable("permission denied".into()),
                _ if e.kind() == std::io::ErrorKind::TimedOut => Outcome::Timeout,
                _ => Outcome::Other(e.to_string()),
            };
        }
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    if stream.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
        return Outcome::Connected;
    }
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    while got.len() < 16 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .map(Outcome::Http)
        .unwrap_or(Outcome::Connected)
}
