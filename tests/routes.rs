//! A route or an address lost, injected for real: the lab's bridge loses its address (and so
//! its connected route), as when a network manager takes docker0 over (moby#40217,
//! systemd#28626). The DNATed packet then either dies with no route (IP_INNOROUTES at
//! ip_error), or, where a default route exists, leaves by the wrong interface and nothing is
//! dropped in the watched namespace: the kernel's routing decision is the evidence. Either
//! way droptrace names `route_lost` and the bridge, never forwarding.
mod common;

use std::time::Duration;

use common::{Output, Watch, require_root};
use serde_json::Value;
use tracer::lab::{Lab, LabSpec, Outcome};

fn lab(label: &str) -> Lab {
    require_root();
    let lab = Lab::up(LabSpec::new(label)).unwrap_or_else(|e| panic!("building the lab: {e}"));
    assert_eq!(
        lab.client_request(Duration::from_secs(3)),
        Outcome::Http(200)
    );
    lab
}

fn watch_client(lab: &Lab) -> (Outcome, Output) {
    let watch = Watch::start(&["--port", "5000", "--netns", &lab.host]);
    let seen = lab.client_request(Duration::from_secs(3));
    // The routing check runs on the observer's tick: give it one.
    std::thread::sleep(Duration::from_millis(1200));
    (seen, watch.stop())
}

/// Asserts that the verdict's `field` (text or list) says every one of `parts`.
fn says(v: &Value, field: &str, parts: &[&str]) {
    let text = match &v[field] {
        Value::String(t) => t.clone(),
        other => other.to_string(),
    };
    for part in parts {
        assert!(text.contains(part), "{field} lacks {part:?}: {text}");
    }
}

fn assert_names_the_bridge(v: &Value) {
    assert_eq!(v["cause"], "route_lost", "{v:#}");
    let text = format!("{} {}", v["sentence"], v["evidence"]);
    assert!(text.contains("docker0 has no IPv4 address"), "{text}");
    says(v, "fix", &["ip addr add 172.17.0.1/16 dev docker0"]);
    says(v, "fix_persistent", &["Unmanaged=yes", "unmanaged-devices"]);
}

#[test]
fn a_bridge_without_its_address_is_route_lost_not_forwarding() {
    let lab = lab("rtnone");
    lab.ip(&lab.host, &["addr", "flush", "dev", "docker0"])
        .unwrap();
    let (seen, out) = watch_client(&lab);
    assert_ne!(seen, Outcome::Http(200), "{}", out.dump());
    let v = common::one_verdict(&out);
    assert_names_the_bridge(&v);
    if common::kernel::has_drop_reasons() {
        assert_eq!(v["proximate"]["reason"], "IP_INNOROUTES", "{v:#}");
    }
    assert_eq!(v["proximate"]["hook"], "routing", "{v:#}");
    // `check` finds the same state without eBPF.
    let (status, finding) = common::check_finding(&lab.host, 5000, "route_lost");
    assert_eq!(status, Some(1), "{finding}");
    let what = finding["what"].as_str().unwrap_or_default();
    assert!(what.contains("docker0 has no IPv4 address"), "{finding}");
    assert!(
        finding["fix"]
            .as_str()
            .unwrap()
            .contains("ip addr add 172.17.0.1/16 dev docker0")
    );
}

#[test]
fn the_process_that_removed_the_bridges_address_while_watched_is_the_culprit() {
    // A long-lived process holding its rtnetlink socket (as a network manager does): `ip
    // -batch -` keeps one socket open between commands. /proc names it by that socket.
    use std::io::Write;
    let lab = lab("rtwho");
    let watch = Watch::start(&["--port", "5000", "--netns", &lab.host]);
    let mut manager = std::process::Command::new("ip")
        .args(["-n", &lab.host, "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("ip -batch");
    let mut stdin = manager.stdin.take().unwrap();
    stdin
        .write_all(b"address del 172.17.0.1/16 dev docker0\n")
        .unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let seen = lab.client_request(Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(1200));
    let out = watch.stop();
    drop(stdin);
    let _ = manager.wait();
    assert_ne!(seen, Outcome::Http(200), "{}", out.dump());
    let change = out
        .of_type("change")
        .into_iter()
        .find(|c| c["source"] == "rtnetlink")
        .unwrap_or_else(|| panic!("the removal is a change line: {}", out.dump()));
    assert_eq!(change["what"], "removed address 172.17.0.1/16 from docker0");
    let v = common::one_verdict(&out);
    assert_names_the_bridge(&v);
    let culprit = &v["culprit"];
    assert_eq!(culprit["source"], "rtnetlink", "{v:#}");
    assert_eq!(culprit["key"], "docker0", "{v:#}");
    assert_eq!(culprit["process"]["pid"], manager.id(), "{v:#}");
    assert_eq!(
        culprit["process"]["captured"], "proc",
        "held its socket: {v:#}"
    );
    says(culprit, "process", &["-batch"]);
}

#[test]
fn a_short_lived_ip_that_flushed_the_bridge_is_named_from_its_exec() {
    // `ip addr flush` has exited before its notification is read: its netlink port is its
    // pid, and the exec probe recorded its command line.
    let lab = lab("rtflush");
    let watch = Watch::start(&["--port", "5000", "--netns", &lab.host]);
    // Started inside the namespace, as on the incident host (the exec probe keeps the
    // watched namespace's programs).
    lab.exec(&lab.host, &["ip", "addr", "flush", "dev", "docker0"])
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let seen = lab.client_request(Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(1200));
    let out = watch.stop();
    assert_ne!(seen, Outcome::Http(200), "{}", out.dump());
    let v = common::one_verdict(&out);
    assert_names_the_bridge(&v);
    let culprit = &v["culprit"];
    assert_eq!(
        culprit["what"], "removed address 172.17.0.1/16 from docker0",
        "{v:#}"
    );
    assert_eq!(culprit["process"]["comm"], "ip", "{v:#}");
    assert_eq!(culprit["process"]["captured"], "kernel", "{v:#}");
    says(culprit, "process", &["ip addr flush dev docker0"]);
}

/// The run's one verdict: route_lost naming docker0, the packets routed via eth-ext.
fn routed_via_eth_ext(out: &Output) -> Value {
    let v = common::one_verdict(out);
    assert_names_the_bridge(&v);
    says(&v, "sentence", &["routed via eth-ext, not docker0"]);
    v
}

/// The host has a default route (its uplink) and docker0 lost its address.
fn routed_away_lab(label: &str) -> Lab {
    let lab = lab(label);
    lab.ip(
        &lab.host,
        &["route", "add", "default", "via", "198.51.100.2"],
    )
    .unwrap();
    lab.ip(&lab.host, &["addr", "flush", "dev", "docker0"])
        .unwrap();
    lab
}

#[test]
fn a_packet_routed_away_from_its_bridge_and_dropped_in_forward_is_route_lost() {
    // Docker's FORWARD rules accept only what goes out docker0: the misrouted packet dies
    // there, after an ICMP redirect (the kernel sends it back out where it came in), and
    // neither the redirect nor the policy is the cause.
    let lab = routed_away_lab("rtfwd");
    let (seen, out) = watch_client(&lab);
    assert_ne!(seen, Outcome::Http(200), "{}", out.dump());
    let v = routed_via_eth_ext(&out);
    assert_eq!(v["proximate"]["hook"], "FORWARD", "where it died: {v:#}");
    assert_eq!(
        v["proximate"]["icmp"],
        Value::Null,
        "a redirect is no rejection: {v:#}"
    );
}

#[test]
fn a_packet_routed_away_from_its_bridge_is_a_verdict_with_no_drop_here() {
    // With FORWARD accepting it (a DOCKER-USER accept), the packet leaves by eth-ext and
    // nothing dies in this namespace: the routing decision alone makes the verdict.
    let lab = routed_away_lab("rtaway");
    lab.iptables(&["-I", "DOCKER-USER", "-j", "ACCEPT"])
        .unwrap();
    let (seen, out) = watch_client(&lab);
    assert_ne!(seen, Outcome::Http(200), "{}", out.dump());
    assert!(
        out.drops().is_empty(),
        "nothing dies in this namespace: {}",
        out.dump()
    );
    let v = routed_via_eth_ext(&out);
    assert_eq!(v["proximate"]["reason"], "ROUTED_AWAY", "{v:#}");
    assert_eq!(v["proximate"]["hook"], "routing", "{v:#}");
}

#[test]
fn control_a_default_route_with_the_bridge_intact_gives_no_verdict() {
    let lab = lab("rtctl");
    lab.ip(
        &lab.host,
        &["route", "add", "default", "via", "198.51.100.2"],
    )
    .unwrap();
    let (seen, out) = watch_client(&lab);
    assert_eq!(seen, Outcome::Http(200), "{}", out.dump());
    assert!(out.of_type("verdict").is_empty(), "{}", out.dump());
}

/// The container's responses are larger than the uplink allows: the host's eth-ext has an MTU
/// of 1000 (a tunnel, a cloud network) while the client and the container speak 1500. The
/// response's full-size segments die with PKT_TOO_BIG at ip_forward. `block_icmp` also drops
/// the "fragmentation needed" the host sends back, in OUTPUT: a black hole.
fn small_uplink(label: &str, block_icmp: bool) -> (Lab, usize, Output) {
    let lab = lab(label);
    let root = std::env::temp_dir().join(format!("{}-www", lab.ctr));
    std::fs::write(root.join("index.html"), "x".repeat(8000)).unwrap();
    lab.ip(&lab.host, &["link", "set", "eth-ext", "mtu", "1000"])
        .unwrap();
    if block_icmp {
        lab.iptables(&[
            "-A",
            "OUTPUT",
            "-p",
            "icmp",
            "--icmp-type",
            "fragmentation-needed",
            "-j",
            "DROP",
        ])
        .unwrap();
    }
    let watch = Watch::start(&["--port", "5000", "--netns", &lab.host]);
    let got = whole_response(&lab);
    let out = watch.stop();
    (lab, got, out)
}

/// The causes `droptrace check` finds for the lab's port 5000, with its exit status.
fn check_causes(lab: &Lab) -> (Option<i32>, Vec<String>) {
    let out = common::run_droptrace(&["check", "--netns", &lab.host, "--port", "5000", "--json"]);
    let causes = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|f| f["type"] == "finding")
        .filter_map(|f| f["cause"].as_str().map(str::to_string))
        .collect();
    (out.status.code(), causes)
}

/// The bytes of the whole response the client reads (bounded: 3 s without progress ends it).
/// The lab's own client stops at the status line, before the body is even sent.
fn whole_response(lab: &Lab) -> usize {
    response_from(&lab.ext)
}

/// The response a client in namespace `ns` reads from the host's published port, to its
/// end (0 when the connection fails; bounded by 3 s timeouts).
fn response_from(ns: &str) -> usize {
    use std::io::{Read, Write};
    let ns = tracer::discover::netns::Netns::resolve(ns).unwrap();
    ns.run_in(|| {
        let target = std::net::SocketAddr::from((tracer::lab::HOST_ADDR, 5000));
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(3))
        else {
            return 0;
        };
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let (mut got, mut buf) = (0, [0u8; 4096]);
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            got += n;
        }
        got
    })
    .unwrap()
}

fn assert_path_mtu(v: &Value) {
    assert_eq!(v["cause"], "path_mtu", "{v:#}");
    if common::kernel::has_drop_reasons() {
        assert_eq!(v["proximate"]["reason"], "PKT_TOO_BIG", "{v:#}");
    }
    says(
        v,
        "evidence",
        &[
            "must leave by eth-ext (MTU 1000)",
            "came in on docker0 (MTU 1500)",
        ],
    );
    says(v, "fix", &["\"mtu\": 1000", "--clamp-mss-to-pmtu"]);
}

#[test]
fn a_dropped_fragmentation_needed_is_a_path_mtu_black_hole() {
    // The status line is small and arrives; the body's full-size segments never do.
    let (lab, got, out) = small_uplink("pmtubh", true);
    assert!(
        got < 8000,
        "the body never arrives ({got} bytes): {}",
        out.dump()
    );
    let v = common::one_verdict(&out);
    assert_path_mtu(&v);
    assert!(v["sentence"].to_string().contains("black hole"), "{v:#}");
    let evidence = v["evidence"].to_string();
    assert!(
        evidence.contains("filter OUTPUT rule 1") && evidence.contains("counter rose"),
        "{evidence}"
    );
    let fix = v["fix"].as_str().unwrap_or_default();
    assert!(fix.contains("-t filter -D OUTPUT -p icmp"), "{fix}");
    // `check` finds the black hole without a packet: the MTUs and the OUTPUT rule.
    let (status, finding) = common::check_finding(&lab.host, 5000, "path_mtu");
    assert_eq!(status, Some(1), "{finding}");
    says(
        &finding,
        "what",
        &[
            "eth-ext has an MTU of 1000 while docker0 has 1500",
            "filter OUTPUT rule 1",
        ],
    );
    says(
        &finding,
        "fix",
        &["\"mtu\": 1000", "-t filter -D OUTPUT -p icmp"],
    );
}

#[test]
fn a_smaller_path_mtu_is_named_even_when_the_sender_adapts() {
    // The ICMP gets out: the container lowers its path MTU and the response arrives, after
    // the first full-size segments died.
    let (lab, got, out) = small_uplink("pmtu", false);
    assert!(
        got > 8000,
        "the whole response arrives ({got} bytes): {}",
        out.dump()
    );
    let v = common::one_verdict(&out);
    assert_path_mtu(&v);
    assert!(
        v["evidence"]
            .to_string()
            .contains("the kernel sent ICMP 3/4"),
        "{v:#}"
    );
    // A smaller uplink alone is no finding: the kernel tells the sender, which adapts.
    let (_, causes) = check_causes(&lab);
    assert!(!causes.contains(&"path_mtu".to_string()), "{causes:?}");
}

/// A second container on docker0, removed when dropped (also on panic).
struct Neighbour(String);

impl Drop for Neighbour {
    fn drop(&mut self) {
        tracer::lab::kill_namespace(&self.0);
    }
}

/// The lab with a second container (172.17.0.3) on docker0 and the DNAT Docker writes without
/// its userland proxy (no `! -i docker0`: containers reach the published port through it
/// too). `bridge_nf` is bridge-nf-call-iptables in the host, set while droptrace watches (as
/// a network script would), then the neighbour connects to the host's published address.
fn hairpin(label: &str, bridge_nf: &str) -> (Lab, usize, Output) {
    let lab = lab(label);
    let ctr2 = Neighbour(format!("{}-ctr2", lab.host));
    tracer::lab::run(&["ip", "netns", "add", &ctr2.0]).unwrap();
    let peer = format!(
        "link add veth-ctr2 type veth peer name eth0 netns {}",
        ctr2.0
    );
    lab.ip(&lab.host, &common::words(&peer)).unwrap();
    lab.ip(
        &lab.host,
        &common::words("link set veth-ctr2 master docker0 up"),
    )
    .unwrap();
    lab.ip(&ctr2.0, &common::words("addr add 172.17.0.3/16 dev eth0"))
        .unwrap();
    lab.ip(&ctr2.0, &common::words("link set eth0 up")).unwrap();
    lab.ip(&ctr2.0, &common::words("route add default via 172.17.0.1"))
        .unwrap();
    let dnat =
        "-t nat -I DOCKER -i docker0 -p tcp --dport 5000 -j DNAT --to-destination 172.17.0.2:5000";
    lab.iptables(&common::words(dnat)).unwrap();
    if !std::path::Path::new("/proc/sys/net/bridge").exists() {
        // Debian's kernels build br_netfilter as a module; dockerd loads it, so does this.
        tracer::lab::run(&["modprobe", "br_netfilter"]).unwrap();
    }
    let watch = Watch::start(&["--port", "5000", "--netns", &lab.host]);
    lab.sysctl(&lab.host, "net.bridge.bridge-nf-call-iptables", bridge_nf)
        .unwrap();
    let got = response_from(&ctr2.0);
    std::thread::sleep(Duration::from_millis(1200));
    let out = watch.stop();
    (lab, got, out)
}

#[test]
fn a_containers_reply_across_the_bridge_without_netfilter_is_bridge_netfilter_off() {
    let (lab, got, out) = hairpin("brnf", "0");
    assert_eq!(got, 0, "the reply is never un-NATed: {}", out.dump());
    let v = common::one_verdict(&out);
    assert_eq!(v["cause"], "bridge_netfilter_off", "{v:#}");
    assert_eq!(v["proximate"]["reason"], "REPLY_BRIDGED", "{v:#}");
    says(
        &v,
        "evidence",
        &["back out docker0", "bridge-nf-call-iptables = 0"],
    );
    says(
        &v,
        "fix",
        &["modprobe br_netfilter", "bridge-nf-call-iptables=1"],
    );
    says(
        &v,
        "fix_persistent",
        &["/etc/modules-load.d/br_netfilter.conf"],
    );
    if common::attached(&out, "sysctl_writes") {
        assert_eq!(
            v["culprit"]["key"], "net.bridge.bridge-nf-call-iptables",
            "{v:#}"
        );
        assert_eq!(v["culprit"]["process"]["comm"], "sysctl", "{v:#}");
    }
    let (status, finding) = common::check_finding(&lab.host, 5000, "bridge_netfilter_off");
    assert_eq!(status, Some(1), "{finding}");
    says(
        &finding,
        "what",
        &["no `! -i docker0`", "bridge-nf-call-iptables = 0"],
    );
    says(&finding, "fix", &["modprobe br_netfilter"]);
}

#[test]
fn control_a_containers_connection_through_the_published_port_with_netfilter_works() {
    let (lab, got, out) = hairpin("brnfok", "1");
    assert!(got > 0, "the neighbour gets its answer: {}", out.dump());
    assert!(out.of_type("verdict").is_empty(), "{}", out.dump());
    assert_eq!(check_causes(&lab), (Some(0), vec![]), "healthy");
}

/// A router advertisement from the client's namespace (the uplink's router): default route,
/// `lifetime` seconds, no prefix. Sent from a raw ICMPv6 socket to ff02::1 with hop limit
/// 255, as a router sends it; the kernel fills the checksum and the link-local source.
fn advertise_router(ns: &str, iface: &'static str, lifetime: u16) {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let ns = tracer::discover::netns::Netns::resolve(ns).unwrap();
    ns.run_in(move || {
        let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).unwrap();
        let name = std::ffi::CString::new(iface).unwrap();
        // SAFETY: a NUL-terminated name that outlives the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        s.set_multicast_if_v6(index).unwrap();
        s.set_multicast_hops_v6(255).unwrap();
        // type 134, code 0, checksum, hop limit 64, flags 0, router lifetime, reachable, retrans
        let mut ra = [0u8; 16];
        ra[0] = 134;
        ra[4] = 64;
        ra[6..8].copy_from_slice(&lifetime.to_be_bytes());
        let all_nodes = std::net::SocketAddrV6::new("ff02::1".parse().unwrap(), 0, 0, index);
        s.send_to(&ra, &SockAddr::from(all_nodes)).unwrap();
    })
    .unwrap();
}

/// The client at 2001:db8:2::2, beyond the uplink's router: the host reaches it only by its
/// IPv6 default route, learned from the router's advertisement while the host did not
/// forward. Then, while droptrace watches, IPv6 forwarding is turned on as dockerd turns it
/// on (`net.ipv6.conf.all.forwarding=1`), with eth-ext's `accept_ra` at `accept_ra`.
fn remote_ipv6_client(label: &str, accept_ra: &str) -> (Lab, Outcome, Output) {
    require_root();
    let mut spec = LabSpec::new(label);
    spec.ipv6 = true;
    let lab = Lab::up(spec).unwrap_or_else(|e| panic!("building the lab: {e}"));
    let remote: std::net::IpAddr = "2001:db8:2::2".parse().unwrap();
    lab.ip(&lab.ext, &["addr", "add", "2001:db8:2::2/128", "dev", "lo"])
        .unwrap();
    // A router says so in its neighbour advertisements; a host that hears "not a router"
    // from its default router drops the route (RFC 4861 7.2.5).
    lab.sysctl(&lab.ext, "net.ipv6.conf.all.forwarding", "1")
        .unwrap();
    lab.sysctl(&lab.host, "net.ipv6.conf.all.forwarding", "0")
        .unwrap();
    lab.sysctl(&lab.host, "net.ipv6.conf.eth-ext.accept_ra", accept_ra)
        .unwrap();
    // Advertised again until it takes, as routers repeat theirs: the router's link-local
    // address stays tentative for its first second (DAD), and an advertisement sent from
    // its global address then is not a router's.
    let learned = (0..50).any(|_| {
        advertise_router(&lab.ext, "eth0", 1800);
        std::thread::sleep(Duration::from_millis(100));
        let routes = lab.ip(&lab.host, &["-6", "route", "show", "default"]);
        routes.is_ok_and(|r| r.contains("proto ra"))
    });
    assert!(
        learned,
        "the host learned its default route from the advertisement: {:?} {:?} {:?}",
        lab.ip(&lab.host, &["-6", "route"]),
        lab.ip(&lab.ext, &["-6", "addr"]),
        lab.exec(&lab.host, &["sysctl", "-a", "--pattern", "eth-ext"])
    );
    let watch = Watch::start(&["--port", "5000", "--netns", &lab.host]);
    lab.exec(
        &lab.host,
        &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
    )
    .unwrap();
    let target = std::net::SocketAddr::new(tracer::lab::HOST_ADDR6.into(), 5000);
    let seen = lab.request_from(&lab.ext, Some(remote), target, Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(1200));
    let out = watch.stop();
    (lab, seen, out)
}

#[test]
fn forwarding_on_with_accept_ra_1_loses_the_ipv6_default_route() {
    let (lab, seen, out) = remote_ipv6_client("ra1", "1");
    assert_ne!(seen, Outcome::Http(200), "{}", out.dump());
    let v = common::one_verdict(&out);
    assert_eq!(v["cause"], "route_lost", "{v:#}");
    assert_eq!(v["proximate"]["hook"], "routing", "{v:#}");
    if common::kernel::has_drop_reasons() {
        assert_eq!(v["proximate"]["reason"], "IP_INNOROUTES", "{v:#}");
    }
    says(
        &v,
        "sentence",
        &["lost its IPv6 default route", "2001:db8:2::2", "eth-ext"],
    );
    says(
        &v,
        "evidence",
        &[
            "net.ipv6.conf.eth-ext.accept_ra = 1",
            "no IPv6 default route",
        ],
    );
    says(&v, "fix", &["sysctl -w net.ipv6.conf.eth-ext.accept_ra=2"]);
    says(
        &v,
        "fix_persistent",
        &["net.ipv6.conf.eth-ext.accept_ra = 2", "IPv6AcceptRA=yes"],
    );
    // Who: the write that turned forwarding on; the kernel's purge of the route is seen too.
    if common::attached(&out, "sysctl_writes") {
        assert_eq!(v["culprit"]["key"], "net.ipv6.conf.all.forwarding", "{v:#}");
        assert_eq!(v["culprit"]["process"]["comm"], "sysctl", "{v:#}");
    }
    let purge = out
        .of_type("change")
        .into_iter()
        .find(|c| c["source"] == "rtnetlink")
        .unwrap_or_else(|| panic!("the route's removal is a change: {}", out.dump()));
    says(
        purge,
        "what",
        &["removed route default via fe80::", "dev eth-ext proto ra"],
    );
    assert_eq!(
        purge["process"]["captured"], "none",
        "the kernel's own: {purge:#}"
    );
    let (status, finding) = common::check_finding(&lab.host, 5000, "route_lost");
    assert_eq!(status, Some(1), "{finding}");
    says(
        &finding,
        "what",
        &[
            "no IPv6 default route",
            "eth-ext forward IPv6 with accept_ra = 1",
        ],
    );
    says(
        &finding,
        "fix",
        &["sysctl -w net.ipv6.conf.eth-ext.accept_ra=2"],
    );
}

#[test]
fn control_accept_ra_2_keeps_the_ipv6_default_route_when_forwarding_goes_on() {
    let (lab, seen, out) = remote_ipv6_client("ra2", "2");
    assert_eq!(seen, Outcome::Http(200), "{}", out.dump());
    assert!(out.of_type("verdict").is_empty(), "{}", out.dump());
    assert_eq!(check_causes(&lab), (Some(0), vec![]), "healthy");
}
