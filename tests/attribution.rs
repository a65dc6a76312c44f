//! Attribution end to end: each real fault injected into the lab's Docker-like host, a real
//! client failing to connect, and droptrace naming the exact cause, hook, rule and fix.
mod common;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use common::{Output, Watch, require_root};
use serde_json::Value;
use tracer::lab::{self, Backend, Lab, LabSpec, Outcome};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

fn lab(label: &str, backend: Backend) -> Lab {
    require_root();
    let mut spec = LabSpec::new(label);
    spec.backend = backend;
    Lab::up(spec).unwrap_or_else(|e| panic!("building the lab: {e}"))
}

/// Runs droptrace on the lab's host namespace while the client tries the published port.
fn watch_client(lab: &Lab) -> (Outcome, Output) {
    let watch = Watch::start(&["--port", "5000", "--netns", &lab.host]);
    let seen = lab.client_request(CLIENT_TIMEOUT);
    (seen, watch.stop())
}

/// The run's single verdict: exactly one (port, cause) group, streamed once and closed once.
fn the_verdict(out: &Output) -> Value {
    let verdicts = out.of_type("verdict");
    let finals: Vec<&&Value> = verdicts.iter().filter(|v| v["final"] == true).collect();
    assert_eq!(finals.len(), 1, "expected one verdict, got: {}", out.dump());
    let streamed = verdicts.iter().filter(|v| v["final"] == false).count();
    assert_eq!(
        streamed,
        1,
        "the verdict must be streamed at its first drop: {}",
        out.dump()
    );
    let v = (*finals[0]).clone();
    let drops = out.drops().len() as u64;
    assert!(v["packets"].as_u64().unwrap_or(0) >= drops.max(1), "{v}");
    for key in [
        "cause",
        "port",
        "proto",
        "packets",
        "first",
        "last",
        "proximate",
        "evidence",
        "fix",
    ] {
        assert!(v.get(key).is_some(), "verdict lacks {key}: {v}");
    }
    v
}

fn assert_cause(v: &Value, cause: &str, hook: Option<&str>) {
    assert_eq!(v["cause"], cause, "{v:#}");
    assert_eq!(v["port"], 5000);
    assert_eq!(
        v["proximate"]["hook"],
        hook.map_or(Value::Null, Value::from),
        "{v:#}"
    );
}

/// The client times out, and the run's one verdict is a firewall_drop in FORWARD: it, and
/// the rule it names.
fn dropped_in_forward(lab: &Lab) -> (Value, String) {
    let (seen, out) = watch_client(lab);
    assert_eq!(seen, Outcome::Timeout);
    let v = the_verdict(&out);
    assert_cause(&v, "firewall_drop", Some("FORWARD"));
    let rule = rule_of(&v);
    (v, rule)
}

fn rule_of(v: &Value) -> String {
    v["proximate"]["rule"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn control_gives_no_verdict_at_all() {
    let lab = lab("ctl", Backend::IptablesNft);
    let (seen, out) = watch_client(&lab);
    assert_eq!(seen, Outcome::Http(200));
    assert!(
        out.of_type("verdict").is_empty(),
        "healthy path got a verdict: {}",
        out.dump()
    );
    assert!(out.drops().is_empty(), "{}", out.dump());
}

#[test]
fn ip_forward_off_is_forwarding_disabled() {
    let lab = lab("fwd", Backend::IptablesNft);
    lab.sysctl(&lab.host, "net.ipv4.ip_forward", "0").unwrap();
    let (seen, out) = watch_client(&lab);
    assert_eq!(seen, Outcome::Timeout);
    let v = the_verdict(&out);
    assert_cause(&v, "forwarding_disabled", Some("routing"));
    assert_eq!(v["proximate"]["reason"], "IP_INADDRERRORS");
    assert_eq!(v["proximate"]["dnat"], true);
    // The routing decision, seen: a forwarding path toward the container, then refused; and
    // not one packet forwarded.
    if let Some(f) = common::flow_of(&out, 5000) {
        assert_eq!(f["forwarded"], 0, "{f}");
        assert!(f["routed_forward"].as_u64().unwrap_or(0) >= 1, "{f}");
        assert!(
            v["evidence"].to_string().contains(&format!(
                "-> {}:5000 via {} (table 254: a forwarding path), then net.ipv4.ip_forward = 0 refused",
                lab::CTR_ADDR,
                lab::BRIDGE
            )),
            "{v:#}"
        );
    }
    let fix = v["fix"].as_str().unwrap();
    assert_eq!(
        fix,
        format!("ip netns exec {} sysctl -w net.ipv4.ip_forward=1", lab.host)
    );
    assert!(
        v["fix_persistent"]
            .as_str()
            .unwrap()
            .contains("/etc/sysctl.d/")
    );
}

#[test]
fn ingress_interface_forwarding_off_is_forwarding_disabled_on_that_interface() {
    let lab = lab("fwdif", Backend::IptablesNft);
    let key = format!("net.ipv4.conf.{}.forwarding", lab::HOST_EXT_IF);
    lab.sysctl(&lab.host, &key, "0").unwrap();
    let (seen, out) = watch_client(&lab);
    assert_eq!(seen, Outcome::Timeout);
    let v = the_verdict(&out);
    assert_cause(&v, "forwarding_disabled", Some("routing"));
    assert!(
        v["fix"]
            .as_str()
            .unwrap()
            .ends_with(&format!("sysctl -w {key}=1")),
        "{v:#}"
    );
}

fn nat_chain_gone_without_listener(backend: Backend) {
    let lab = lab("natgone", backend);
    for args in common::DELETE_DOCKER_NAT_CHAIN {
        lab.iptables(args).unwrap();
    }
    let (seen, out) = watch_client(&lab);
    assert_eq!(seen, Outcome::Refused, "nothing listens on the host: RST");
    let v = the_verdict(&out);
    assert_cause(&v, "missing_chain", Some("socket"));
    assert_eq!(v["proximate"]["reason"], "NO_SOCKET");
    assert_eq!(v["proximate"]["dnat"], false);
    if common::kernel::reports_rsts_for_closed_ports() {
        assert_eq!(v["proximate"]["icmp"], "tcp-reset");
    } else {
        // Before 6.10 the kernel sends the RST without passing the tracepoint: nothing to claim.
        assert_eq!(v["proximate"]["icmp"], Value::Null, "{v:#}");
    }
    assert!(
        v["sentence"]
            .as_str()
            .unwrap()
            .contains("nat chain DOCKER is gone"),
        "{v:#}"
    );
    // The routing decision says the same from the other side: local delivery (that lookup
    // carries no port, so it is evidence rather than a per-port count), nothing forwarded.
    if let Some(f) = common::flow_of(&out, 5000) {
        assert_eq!(f["forwarded"], 0, "{f}");
        assert!(
            v["evidence"].to_string().contains(&format!(
                "the routing lookup for {}:5000 chose local delivery",
                lab::HOST_ADDR
            )),
            "{v:#}"
        );
    }
}

#[test]
fn nat_chain_flushed_and_deleted_is_missing_chain() {
    nat_chain_gone_without_listener(Backend::IptablesNft);
}

#[test]
fn nat_chain_flushed_and_deleted_is_missing_chain_on_legacy() {
    nat_chain_gone_without_listener(Backend::IptablesLegacy);
}

fn dnat_gone_and_input_reject(backend: Backend) {
    let lab = lab("dnatrej", backend);
    lab.iptables(&[
        "-t",
        "nat",
        "-D",
        "DOCKER",
        "!",
        "-i",
        "docker0",
        "-p",
        "tcp",
        "-m",
        "tcp",
        "--dport",
        "5000",
        "-j",
        "DNAT",
        "--to-destination",
        "172.17.0.2:5000",
    ])
    .unwrap();
    lab.iptables(&[
        "-A",
        "INPUT",
        "-j",
        "REJECT",
        "--reject-with",
        "icmp-host-prohibited",
    ])
    .unwrap();
    let (seen, out) = watch_client(&lab);
    assert!(matches!(seen, Outcome::Unreachable(_)), "client saw {seen}");
    let v = the_verdict(&out);
    assert_cause(&v, "missing_chain", Some("LOCAL_IN"));
    assert_eq!(v["proximate"]["reason"], "NETFILTER_DROP");
    assert_eq!(v["proximate"]["dnat"], false);
    assert_eq!(v["proximate"]["icmp"], "3/10 host-prohibited");
    let rule = rule_of(&v);
    assert!(
        rule.contains(&format!("{} ip filter INPUT rule 1", backend.iptables())),
        "rule: {rule}"
    );
}

#[test]
fn dnat_rule_gone_with_input_reject_is_missing_chain_rejected_in_local_in() {
    dnat_gone_and_input_reject(Backend::IptablesNft);
}

#[test]
fn dnat_rule_gone_with_input_reject_is_missing_chain_on_legacy() {
    dnat_gone_and_input_reject(Backend::IptablesLegacy);
}

fn forward_reject(backend: Backend) {
    let lab = lab("fwdrej", backend);
    lab.iptables(&[
        "-I",
        "FORWARD",
        "-p",
        "tcp",
        "--dport",
        "5000",
        "-j",
        "REJECT",
        "--reject-with",
        "icmp-host-prohibited",
    ])
    .unwrap();
    let (seen, out) = watch_client(&lab);
    assert!(matches!(seen, Outcome::Unreachable(_)), "client saw {seen}");
    let v = the_verdict(&out);
    assert_cause(&v, "firewall_reject", Some("FORWARD"));
    assert_eq!(v["proximate"]["dnat"], true);
    assert_eq!(v["proximate"]["icmp"], "3/10 host-prohibited");
    let rule = rule_of(&v);
    assert!(
        rule.contains("filter FORWARD rule 1") && rule.contains("-j REJECT"),
        "rule: {rule}"
    );
}

#[test]
fn forward_reject_is_firewall_reject() {
    forward_reject(Backend::IptablesNft);
}

#[test]
fn forward_reject_is_firewall_reject_on_legacy() {
    forward_reject(Backend::IptablesLegacy);
}

fn docker_user_drop(backend: Backend) {
    docker_user_drop_on(lab("dudrop", backend));
}

/// A DROP for the port in DOCKER-USER on `lab`: firewall_drop naming the rule, confirmed by
/// its counter, placed in FORWARD (by the probes when they loaded). Returns the run.
fn docker_user_drop_on(lab: Lab) -> Output {
    lab.iptables(&[
        "-I",
        "DOCKER-USER",
        "-p",
        "tcp",
        "--dport",
        "5000",
        "-j",
        "DROP",
    ])
    .unwrap();
    let (seen, out) = watch_client(&lab);
    assert_eq!(seen, Outcome::Timeout);
    let v = the_verdict(&out);
    assert_cause(&v, "firewall_drop", Some("FORWARD"));
    assert_eq!(v["proximate"]["icmp"], Value::Null);
    let rule = rule_of(&v);
    assert!(
        rule.contains("filter DOCKER-USER rule 1") && rule.contains("-j DROP"),
        "rule: {rule}"
    );
    assert!(
        v["evidence"].to_string().contains("packet counter rose"),
        "the rule must be confirmed by its counter: {v:#}"
    );
    // The netfilter hook probes (netfilter links on Linux >= 6.4, fentry/fexit on
    // nf_hook_slow before) saw each packet enter FORWARD, never leave; without them the hook
    // above was inferred and no probe claims anything.
    let probed = if out.of_type("start")[0]["signals"]
        .to_string()
        .contains("netfilter_hooks")
    {
        Value::from("FORWARD")
    } else {
        Value::Null
    };
    for d in out.drops() {
        assert_eq!(d["nf_hook"], probed, "{d}");
    }
    out
}

/// Once a firewall uses IPv6 conntrack in the namespace, its confirmation hook holds the
/// priority the "after" probes ask for (INT_MAX - 1 in ip6 input): the probes still load, on a
/// neighbouring priority, and still place the drop.
#[test]
fn hook_probes_load_where_ipv6_conntrack_holds_their_priority() {
    if !common::kernel::has_netfilter_links() {
        eprintln!("skipped: this kernel has no netfilter BPF links (Linux >= 6.4)");
        return;
    }
    let lab = lab("ct6prio", Backend::IptablesNft);
    lab.exec_with_input(
        &lab.host,
        &["nft", "-f", "-"],
        "table ip6 ct6 {\n chain in {\n type filter hook input priority 0;\n ct state established accept\n }\n}\n",
    )
    .unwrap();
    let out = docker_user_drop_on(lab);
    let start = out.of_type("start")[0];
    assert!(
        start["signals"].to_string().contains("netfilter_hooks"),
        "the hook probes must load (then every drop is placed in FORWARD): {start}"
    );
    assert!(!start["notes"].to_string().contains("busy"), "{start}");
}

#[test]
fn docker_user_drop_is_firewall_drop_naming_the_rule() {
    docker_user_drop(Backend::IptablesNft);
}

#[test]
fn docker_user_drop_is_firewall_drop_on_legacy() {
    docker_user_drop(Backend::IptablesLegacy);
}

fn forward_policy_drop(backend: Backend) {
    let lab = lab("policy", backend);
    lab.iptables(&["-F"]).unwrap();
    let (_, rule) = dropped_in_forward(&lab);
    assert!(rule.contains("FORWARD policy DROP"), "rule: {rule}");
}

#[test]
fn flushed_filter_leaves_forward_policy_drop() {
    forward_policy_drop(Backend::IptablesNft);
}

#[test]
fn flushed_filter_leaves_forward_policy_drop_on_legacy() {
    forward_policy_drop(Backend::IptablesLegacy);
}

#[test]
fn nftables_native_drop_in_its_own_table_is_named() {
    let lab = lab("nftdrop", Backend::IptablesNft);
    let host = lab.host.clone();
    lab.exec(&host, &["nft", "add", "table", "inet", "blocker"])
        .unwrap();
    lab.exec(
        &host,
        &[
            "nft",
            "add chain inet blocker forward_block { type filter hook forward priority 0; }",
        ],
    )
    .unwrap();
    lab.exec(
        &host,
        &[
            "nft",
            "add",
            "rule",
            "inet",
            "blocker",
            "forward_block",
            "tcp",
            "dport",
            "5000",
            "drop",
        ],
    )
    .unwrap();
    let (_, rule) = dropped_in_forward(&lab);
    assert!(
        rule.contains("table inet blocker chain forward_block"),
        "rule: {rule}"
    );
}

#[test]
fn rp_filter_drop_is_a_kernel_drop_explained_with_its_sysctl() {
    let lab = lab("rpf", Backend::IptablesNft);
    let (ext, host) = (lab.ext.clone(), lab.host.clone());
    // Control first: it also leaves the host's MAC in the client's neighbour cache (the ARP
    // request from the second address below would itself fail the reverse-path check).
    assert_eq!(lab.client_request(CLIENT_TIMEOUT), Outcome::Http(200));
    // The client also owns 203.0.113.2; the host routes that network via docker0, so a SYN
    // from it arriving on eth-ext fails the strict reverse-path check.
    lab.ip(&ext, &["addr", "add", "203.0.113.2/32", "dev", "eth0"])
        .unwrap();
    lab.ip(
        &host,
        &["route", "add", "203.0.113.0/24", "dev", lab::BRIDGE],
    )
    .unwrap();
    lab.sysctl(&host, "net.ipv4.conf.all.rp_filter", "1")
        .unwrap();
    lab.sysctl(
        &host,
        &format!("net.ipv4.conf.{}.rp_filter", lab::HOST_EXT_IF),
        "1",
    )
    .unwrap();

    let watch = Watch::start(&["--port", "5000", "--netns", &host]);
    let target = SocketAddr::new(IpAddr::V4(lab::HOST_ADDR), 5000);
    let seen = lab.request_from(
        &ext,
        Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 2))),
        target,
        CLIENT_TIMEOUT,
    );
    let out = watch.stop();
    assert_eq!(seen, Outcome::Timeout);
    let v = the_verdict(&out);
    assert_cause(&v, "kernel_drop", Some("routing"));
    assert_eq!(v["proximate"]["reason"], "IP_RPFILTER");
    assert!(v["fix"].as_str().unwrap().contains("rp_filter=2"), "{v:#}");
    assert!(v["evidence"].to_string().contains("rp_filter = 1"), "{v:#}");
}

#[test]
fn raw_prerouting_drop_is_placed_before_conntrack_and_dnat() {
    let lab = lab("rawdrop", Backend::IptablesNft);
    lab.iptables(&[
        "-t",
        "raw",
        "-A",
        "PREROUTING",
        "-p",
        "tcp",
        "--dport",
        "5000",
        "-j",
        "DROP",
    ])
    .unwrap();
    let (seen, out) = watch_client(&lab);
    assert_eq!(seen, Outcome::Timeout);
    let v = the_verdict(&out);
    assert_cause(&v, "firewall_drop", Some("PRE_ROUTING"));
    assert_eq!(
        v["proximate"]["dnat"],
        Value::Null,
        "not tracked yet: {v:#}"
    );
    let rule = rule_of(&v);
    assert!(rule.contains("raw PREROUTING rule 1"), "rule: {rule}");
    for d in out.drops() {
        assert_eq!(
            d["dst"],
            lab::HOST_ADDR.to_string(),
            "dropped before DNAT: {d}"
        );
    }
}

#[test]
fn trace_rules_names_the_exact_rule_and_leaves_no_table_behind() {
    let lab = lab("tracerules", Backend::IptablesNft);
    let host = lab.host.clone();
    // Two native tables drop port 5000 in FORWARD; only the second matches this client.
    // Neither has a counter, so only the kernel's own rule trace can tell them apart.
    for (table, rule) in [
        ("decoy", "ip saddr 192.0.2.99 tcp dport 5000 drop"),
        ("blocker", "ip saddr 198.51.100.2 tcp dport 5000 drop"),
    ] {
        lab.exec(&host, &["nft", "add", "table", "inet", table])
            .unwrap();
        lab.exec(
            &host,
            &[
                "nft",
                &format!(
                    "add chain inet {table} fwd_{table} {{ type filter hook forward priority 0; }}"
                ),
            ],
        )
        .unwrap();
        lab.exec(
            &host,
            &["nft", &format!("add rule inet {table} fwd_{table} {rule}")],
        )
        .unwrap();
    }
    let watch = Watch::start(&["--port", "5000", "--netns", &host, "--trace-rules"]);
    let notes = watch.start["notes"].to_string();
    assert!(
        notes.contains("droptrace_trace"),
        "the change must be announced: {notes}"
    );
    let seen = lab.client_request(CLIENT_TIMEOUT);
    let out = watch.stop();
    assert_eq!(seen, Outcome::Timeout);
    let v = the_verdict(&out);
    assert_cause(&v, "firewall_drop", Some("FORWARD"));
    let rule = rule_of(&v);
    assert!(
        rule.contains("inet blocker fwd_blocker rule ip saddr 198.51.100.2 tcp dport 5000 drop"),
        "rule: {rule}"
    );
    let tables = lab.exec(&host, &["nft", "list", "tables"]).unwrap();
    assert!(
        !tables.contains("droptrace_trace"),
        "trace table left behind: {tables}"
    );
}

/// The port published over IPv6 too (dockerd with ip6tables): the kernel's IPv6 routing
/// decision and the forwarded packets are counted; IPv6 forwarding off is named, with the
/// decision it overrode.
#[test]
fn ipv6_published_port_is_forwarded_then_refused_when_ipv6_forwarding_is_off() {
    require_root();
    let mut spec = LabSpec::new("fwd6");
    spec.ipv6 = true;
    let lab = Lab::up(spec).unwrap_or_else(|e| panic!("building the lab: {e}"));
    let target = SocketAddr::new(IpAddr::V6(lab::HOST_ADDR6), 5000);

    let watch = Watch::start(&["--port", "5000", "--netns", &lab.host]);
    for _ in 0..3 {
        assert_eq!(
            lab.request(&lab.ext, target, CLIENT_TIMEOUT),
            Outcome::Http(200)
        );
    }
    let out = watch.stop();
    assert!(out.drops().is_empty(), "{}", out.dump());
    if common::kernel::has_forwarding_tracepoints() {
        let f = common::flow_of(&out, 5000).expect("the port's flow");
        assert!(f["forwarded"].as_u64().unwrap_or(0) >= 3, "{f}");
        assert!(f["routed_forward"].as_u64().unwrap_or(0) >= 3, "{f}");
        assert_eq!(f["dropped"], 0, "{f}");
    }

    lab.sysctl(&lab.host, "net.ipv6.conf.all.forwarding", "0")
        .unwrap();
    let watch = Watch::start(&["--port", "5000", "--netns", &lab.host]);
    let seen = lab.request(&lab.ext, target, CLIENT_TIMEOUT);
    let out = watch.stop();
    assert_eq!(seen, Outcome::Timeout);
    let v = the_verdict(&out);
    assert_cause(&v, "forwarding_disabled", Some("routing"));
    assert_eq!(v["proximate"]["reason"], "IP_INADDRERRORS", "{v:#}");
    assert_eq!(v["proximate"]["dnat"], true, "{v:#}");
    assert_eq!(
        v["fix"],
        format!(
            "ip netns exec {} sysctl -w net.ipv6.conf.all.forwarding=1",
            lab.host
        )
    );
    if common::kernel::has_forwarding_tracepoints() {
        let f = common::flow_of(&out, 5000).expect("the port's flow");
        assert_eq!(f["forwarded"], 0, "{f}");
        assert!(f["routed_forward"].as_u64().unwrap_or(0) >= 1, "{f}");
        assert!(
            v["evidence"].to_string().contains(&format!(
                "-> [{}]:5000 via {} (table 254: a forwarding path), then net.ipv6.conf.all.forwarding = 0 refused",
                lab::CTR_ADDR6,
                lab::BRIDGE
            )),
            "{v:#}"
        );
    }
}

/// The routing decisions from the classic fib tracepoints (the fallback where the tp_btf
/// programs cannot load, forced here): the same evidence in both families, and the start
/// line says what the fallback cannot be sure of.
#[test]
fn classic_fib_tracepoints_give_the_same_routing_evidence() {
    require_root();
    if !common::kernel::has_forwarding_tracepoints() {
        eprintln!("no fib tracepoints on this kernel: skipped");
        return;
    }
    let mut spec = LabSpec::new("fwdtp");
    spec.ipv6 = true;
    let lab = Lab::up(spec).unwrap_or_else(|e| panic!("building the lab: {e}"));
    lab.sysctl(&lab.host, "net.ipv4.ip_forward", "0").unwrap();
    lab.sysctl(&lab.host, "net.ipv6.conf.all.forwarding", "0")
        .unwrap();
    let args = [
        "--port",
        "5000",
        "--netns",
        &lab.host,
        "--routing-hook",
        "tracepoint",
    ];
    for (target, key, ctr) in [
        (
            SocketAddr::new(IpAddr::V4(lab::HOST_ADDR), 5000),
            "net.ipv4.ip_forward",
            lab::CTR_ADDR.to_string(),
        ),
        (
            SocketAddr::new(IpAddr::V6(lab::HOST_ADDR6), 5000),
            "net.ipv6.conf.all.forwarding",
            format!("[{}]", lab::CTR_ADDR6),
        ),
    ] {
        let watch = Watch::start(&args);
        assert_eq!(
            lab.request(&lab.ext, target, CLIENT_TIMEOUT),
            Outcome::Timeout
        );
        let out = watch.stop();
        let start = &out.of_type("start")[0];
        assert!(
            start["signals"].to_string().contains("routing_decisions"),
            "{start}"
        );
        assert_eq!(
            start["notes"]
                .to_string()
                .matches("classic fib tracepoints")
                .count(),
            1,
            "said once for both families: {start}"
        );
        let v = the_verdict(&out);
        assert_cause(&v, "forwarding_disabled", Some("routing"));
        let f = common::flow_of(&out, 5000).expect("the port's flow");
        assert!(
            f["routed_forward"].as_u64().unwrap_or(0) >= 1,
            "{f}: {}",
            out.dump()
        );
        assert!(
            v["evidence"].to_string().contains(&format!(
                "-> {ctr}:5000 via {} (table 254: a forwarding path), then {key} = 0 refused",
                lab::BRIDGE
            )),
            "{v:#}"
        );
    }
}

/// Human output: the verdict block once, when it begins; at the end one totals line per
/// verdict under the summary, not the block again.
#[test]
fn human_output_shows_each_verdict_once_and_totals_them_at_the_end() {
    use std::io::{BufRead, BufReader, Read};
    let lab = lab("human", Backend::IptablesNft);
    lab.sysctl(&lab.host, "net.ipv4.ip_forward", "0").unwrap();
    let mut child = std::process::Command::new(&*common::DROPTRACE)
        .args([
            "watch",
            "--port",
            "5000",
            "--netns",
            &lab.host,
            "--duration",
            "6",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn droptrace");
    // The banner (stderr) says it is attached; the rest of stderr is drained, not closed.
    let stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains("watching port 5000") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("droptrace's banner within 20 s");
    assert_eq!(lab.client_request(CLIENT_TIMEOUT), Outcome::Timeout);
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("stdout");
    assert!(child.wait().expect("exit").success(), "{out}");
    assert_eq!(
        out.matches("\nVERDICT port 5000/tcp: forwarding_disabled")
            .count(),
        1,
        "{out}"
    );
    let (_, tail) = out.split_once("-- summary:").expect("summary");
    assert!(
        tail.contains("verdicts (each shown above when it began):"),
        "{out}"
    );
    let row = tail
        .lines()
        .find(|l| l.trim_start().starts_with("forwarding_disabled"))
        .unwrap_or_else(|| panic!("no totals row: {out}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], "5000/tcp", "{row}");
    assert!(cols[2].parse::<u64>().unwrap_or(0) >= 1, "{row}");
}

/// A rule in the other iptables backend: Docker's rules live in iptables-nft (Debian's
/// `iptables`), a DROP sits in iptables-legacy, so `iptables -L` does not show it
/// (moby/libnetwork#2331). And the reverse.
fn rule_in_the_other_backend(engine: Backend) {
    let lab = lab("otherbe", engine);
    let other = match engine {
        Backend::IptablesNft => "iptables-legacy",
        Backend::IptablesLegacy => "iptables-nft",
    };
    lab.exec(
        &lab.host,
        &[
            other, "-I", "FORWARD", "-p", "tcp", "--dport", "5000", "-j", "DROP",
        ],
    )
    .unwrap();
    let (v, rule) = dropped_in_forward(&lab);
    assert!(
        rule.starts_with(&format!("{other} ip filter FORWARD rule 1")),
        "{rule}"
    );
    let evidence = v["evidence"].to_string();
    assert!(
        evidence.contains(&format!(
            "the rule is in {other}, while the engine's rules are in {}",
            engine.iptables()
        )) && evidence.contains(&format!("`{} -L` does not list it", engine.iptables())),
        "{evidence}"
    );
    let fix = v["fix"].as_str().unwrap_or_default();
    assert!(
        fix.contains(&format!(
            "{other} -t filter -D FORWARD -p tcp -m tcp --dport 5000 -j DROP"
        )),
        "the exact command: {fix}"
    );
}

#[test]
fn a_drop_in_the_other_iptables_backend_than_the_engines_names_its_backend() {
    // A legacy rule beside Docker's nft rules, then an nft rule beside Docker's legacy ones.
    for engine in [Backend::IptablesNft, Backend::IptablesLegacy] {
        rule_in_the_other_backend(engine);
    }
}

/// firewalld 2.3's reject of DNATed traffic (`ct status dnat reject with icmpx
/// admin-prohibited` in an inet table, no counter) behind Docker's FORWARD policy DROP. The
/// kernel rate-limits the ICMP errors a REJECT sends, so in a burst most rejected SYNs leave
/// no answer: they are the same reject, one verdict, never the policy that did not drop.
#[test]
fn a_rejects_rate_limited_packets_are_the_same_verdict_not_the_policy() {
    let lab = lab("ratelim", Backend::IptablesNft);
    lab.exec_with_input(
        &lab.host,
        &["nft", "-f", "-"],
        "table inet fw {\n chain dnat_reject {\n  type filter hook forward priority filter + 10;\n  ct status dnat reject with icmpx admin-prohibited\n }\n}\n",
    )
    .unwrap();
    // Every drop and answer its own line, to compare them.
    let watch = Watch::start(&["--port", "5000", "--netns", &lab.host, "--every-drop"]);
    let ns = tracer::discover::netns::Netns::resolve(&lab.ext).unwrap();
    ns.run_in(|| {
        let target = SocketAddr::from((lab::HOST_ADDR, 5000));
        for _ in 0..30 {
            let _ = std::net::TcpStream::connect_timeout(&target, Duration::from_millis(30));
        }
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = watch.stop();
    let answered = out.of_type("signal").len();
    let drops = out.drops().len();
    // Where the ICMP is seen before the rate limit (5.10: no icmp_send tracepoint, fentry on
    // __icmp_send), every reject counts as answered and the premise cannot be shown.
    let before_limit = out.of_type("start")[0]["notes"]
        .to_string()
        .contains("__icmp_send");
    assert!(
        before_limit || answered < drops,
        "the burst outran the ICMP rate limit ({answered} answers, {drops} drops)"
    );
    let v = the_verdict(&out);
    assert_cause(&v, "firewall_reject", Some("FORWARD"));
    let rule = rule_of(&v);
    assert!(
        rule.contains("table inet fw chain dnat_reject") && rule.contains("reject"),
        "{rule}"
    );
    assert!(
        !out.dump().contains("policy DROP\""),
        "no policy is blamed: {}",
        out.dump()
    );
}

/// A network namespace the test adds beside the lab (removed when dropped, also on panic).
struct ExtraNs(String);

impl Drop for ExtraNs {
    fn drop(&mut self) {
        lab::kill_namespace(&self.0);
    }
}

/// Routed traffic Docker does not publish (a NodePort-like service behind another interface
/// of the host, no DNAT) meets the FORWARD policy DROP dockerd sets (kubernetes#40182): the
/// policy is named, and the fix accepts the flow in DOCKER-USER (never a RETURN, which would
/// only go on to the policy) or asks dockerd to leave the policy alone.
#[test]
fn routed_traffic_docker_does_not_publish_meets_its_forward_policy() {
    let lab = lab("nodeport", Backend::IptablesNft);
    let svc = ExtraNs(format!("{}-svc", lab.host));
    lab::run(&["ip", "netns", "add", &svc.0]).unwrap();
    lab.ip(
        &lab.host,
        &[
            "link", "add", "veth-svc", "type", "veth", "peer", "name", "eth0", "netns", &svc.0,
        ],
    )
    .unwrap();
    lab.ip(
        &lab.host,
        &["addr", "add", "10.9.0.1/24", "dev", "veth-svc"],
    )
    .unwrap();
    lab.ip(&lab.host, &["link", "set", "veth-svc", "up"])
        .unwrap();
    lab.ip(&svc.0, &["addr", "add", "10.9.0.2/24", "dev", "eth0"])
        .unwrap();
    lab.ip(&svc.0, &["link", "set", "eth0", "up"]).unwrap();
    lab.ip(
        &lab.ext,
        &["route", "add", "10.9.0.0/24", "via", "198.51.100.1"],
    )
    .unwrap();
    let watch = Watch::start(&["--port", "5000", "--netns", &lab.host]);
    let target = SocketAddr::from((Ipv4Addr::new(10, 9, 0, 2), 5000));
    let seen = lab.request(&lab.ext, target, CLIENT_TIMEOUT);
    let out = watch.stop();
    assert_eq!(seen, Outcome::Timeout, "{}", out.dump());
    let v = the_verdict(&out);
    assert_cause(&v, "firewall_drop", Some("FORWARD"));
    assert!(rule_of(&v).contains("filter FORWARD policy DROP"), "{v:#}");
    assert!(
        v["evidence"].to_string().contains("kubernetes#40182"),
        "{v:#}"
    );
    let fix = v["fix"].as_str().unwrap_or_default();
    assert!(
        fix.contains("iptables -I DOCKER-USER -i eth-ext -p tcp --dport 5000 -j ACCEPT")
            || fix.contains(
                "iptables -I DOCKER-USER -i eth-ext -o veth-svc -p tcp --dport 5000 -j ACCEPT"
            ),
        "{fix}"
    );
    assert!(
        fix.contains("--ip-forward-no-drop") && !fix.contains("RETURN"),
        "{fix}"
    );
}
