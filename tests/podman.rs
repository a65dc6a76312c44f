//! Podman's network backend, the real netavark, publishing `-p 5001:5000` (host port differs
//! from the container's) with its iptables driver, and the faults users met with it: a DROP
//! for the container port in FORWARD next to netavark's own `--ctstate INVALID` DROP.
mod common;

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use common::{Watch, netavark::PodmanHost, run_droptrace};
use serde_json::Value;
use tracer::lab::{self, Outcome};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a remote client reaches the published port.
const PUBLISHED: SocketAddr = SocketAddr::new(IpAddr::V4(lab::HOST_ADDR), 5001);

/// netavark's INVALID drop (first in its forward chain, as netavark >= 1.5 writes it) and a
/// user's DROP for the container's port in FORWARD.
fn block_container_port(host: &PodmanHost) {
    let lab = &host.lab;
    let invalid = [
        "-I",
        "NETAVARK_FORWARD",
        "1",
        "-m",
        "conntrack",
        "--ctstate",
        "INVALID",
        "-j",
        "DROP",
    ];
    lab.iptables(&invalid).unwrap();
    let drop = [
        "-I",
        "FORWARD",
        "1",
        "-d",
        "10.88.0.2",
        "-p",
        "tcp",
        "--dport",
        "5000",
        "-j",
        "DROP",
    ];
    lab.iptables(&drop).unwrap();
}

#[test]
fn netavark_publishes_and_droptrace_finds_the_port_from_its_rules() {
    let host = PodmanHost::up("nvports", 5001, 5000);
    let lab = &host.lab;
    assert_eq!(
        lab.request(&lab.ext, PUBLISHED, CLIENT_TIMEOUT),
        Outcome::Http(200)
    );
    let out = run_droptrace(&["ports", "--netns", &lab.host, "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let port: Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["host_port"] == 5001)
        .unwrap_or_else(|| panic!("5001 not discovered: {text}"));
    assert_eq!(port["container_ip"], "10.88.0.2", "{port}");
    assert_eq!(port["container_port"], 5000, "{port}");
}

#[test]
fn a_drop_for_the_container_port_is_blamed_on_it_not_on_netavarks_invalid_rule() {
    let host = PodmanHost::up("nvdrop", 5001, 5000);
    let lab = &host.lab;
    block_container_port(&host);
    let watch = Watch::start(&["--port", "5001", "--netns", &lab.host]);
    let seen = lab.request(&lab.ext, PUBLISHED, CLIENT_TIMEOUT);
    let out = watch.stop();
    assert_eq!(seen, Outcome::Timeout);
    let verdicts = out.of_type("verdict");
    let v = verdicts
        .iter()
        .find(|v| v["final"] == true)
        .unwrap_or_else(|| panic!("no verdict: {}", out.dump()));
    assert_eq!(v["cause"], "firewall_drop", "{v:#}");
    assert_eq!(v["port"], 5001, "{v:#}");
    assert_eq!(v["proximate"]["hook"], "FORWARD", "{v:#}");
    let rule = v["proximate"]["rule"].as_str().unwrap_or_default();
    assert!(
        rule.contains("filter FORWARD rule 1") && rule.contains("--dport 5000"),
        "the user's rule, not netavark's: {v:#}"
    );
    assert!(!v["fix"].to_string().contains("INVALID"), "{v:#}");
}

#[test]
fn check_sees_a_forward_drop_of_the_container_port_after_dnat() {
    let host = PodmanHost::up("nvcheck", 5001, 5000);
    let lab = &host.lab;
    let healthy = run_droptrace(&["check", "--netns", &lab.host, "--port", "5001", "--json"]);
    assert_eq!(
        healthy.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&healthy.stdout)
    );
    block_container_port(&host);
    let out = run_droptrace(&["check", "--netns", &lab.host, "--port", "5001", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let finding: Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "finding")
        .unwrap_or_else(|| panic!("no finding: {text}"));
    assert_eq!(finding["cause"], "firewall_drop", "{finding}");
    assert_eq!(finding["port"], 5001, "{finding}");
    let what = finding["what"].as_str().unwrap_or_default();
    assert!(
        what.contains("FORWARD rule 1") && what.contains("--dport 5000"),
        "{finding}"
    );
    assert!(
        !text.contains("INVALID"),
        "netavark's own rule is no finding: {text}"
    );
}
