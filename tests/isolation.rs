//! The engine's own isolation rules, injected for real: Docker 28's iptables layout for
//! `-p 5000:5000` on docker0 (`docker28-layout.rules`, the layout moby documents) restored
//! into the lab's host namespace. Docker drops, by design, packets routed straight to a
//! container's address from outside its bridge (raw PREROUTING, moby#49792) and packets for a
//! container port that is not published (the per-bridge final DROP in DOCKER). droptrace names
//! them as Docker's protection with Docker's own remedies, never "remove the rule".
mod common;

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use common::{Output, Watch, require_root};
use serde_json::Value;
use tracer::lab::{Lab, LabSpec, Outcome};

const DOCKER28: &str = include_str!("../tracer/src/observe/state/testdata/docker28-layout.rules");

/// The lab with Docker 28's rules in place of the lab's own (`edit` changes them first).
fn docker28_lab(label: &str, edit: impl Fn(&str) -> String) -> Lab {
    require_root();
    let lab = Lab::up(LabSpec::new(label)).unwrap_or_else(|e| panic!("building the lab: {e}"));
    lab.exec_with_input(&lab.host, &["iptables-nft-restore"], &edit(DOCKER28))
        .expect("iptables-nft-restore of Docker 28's layout");
    lab
}

fn watch(lab: &Lab, target: SocketAddr) -> (Outcome, Output) {
    let w = Watch::start(&["--port", "5000", "--netns", &lab.host]);
    let seen = lab.request(&lab.ext, target, Duration::from_secs(2));
    (seen, w.stop())
}

const PUBLISHED: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(tracer::lab::HOST_ADDR), 5000);
const DIRECT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(172, 17, 0, 2)), 5000);

fn assert_no_rule_removal(v: &Value) {
    let advice = format!("{} {}", v["fix"], v["fix_persistent"]).to_lowercase();
    assert!(
        !advice.contains("remove"),
        "never remove Docker's rule: {advice}"
    );
    assert!(!advice.contains("iptables -d"), "{advice}");
}

#[test]
fn a_client_routing_straight_to_the_container_meets_dockers_direct_access_drop() {
    let lab = docker28_lab("iso-direct", str::to_string);
    assert_direct_access_drop(
        &lab,
        &["raw PREROUTING rule 1: -d 172.17.0.2/32 ! -i docker0 -j DROP"],
    );
}

/// A client that routes the container's subnet through the host, past the published port,
/// meets Docker's direct-access drop in PRE_ROUTING (`rule_parts`): Docker's protection, with
/// Docker's remedies (the published port on the host's address, trusted interfaces, direct
/// routing, nat-unprotected), never "remove the rule".
fn assert_direct_access_drop(lab: &Lab, rule_parts: &[&str]) {
    lab.ip(
        &lab.ext,
        &["route", "add", "172.17.0.0/16", "via", "198.51.100.1"],
    )
    .unwrap();
    let (seen, out) = watch(lab, DIRECT);
    assert_eq!(seen, Outcome::Timeout, "{}", out.dump());
    let v = common::one_verdict(&out);
    assert_eq!(v["cause"], "engine_isolation", "{v:#}");
    assert_eq!(v["proximate"]["hook"], "PRE_ROUTING", "{v:#}");
    let rule = v["proximate"]["rule"].as_str().unwrap_or_default();
    for part in rule_parts {
        assert!(rule.contains(part), "{part}: {rule}");
    }
    let fix = v["fix"].as_str().unwrap_or_default();
    assert!(
        fix.contains("198.51.100.1:5000"),
        "use the published port on the host: {fix}"
    );
    for remedy in [
        "trusted_host_interfaces",
        "allow-direct-routing",
        "nat-unprotected",
    ] {
        assert!(fix.contains(remedy), "{remedy}: {fix}");
    }
    assert_no_rule_removal(&v);
}

#[test]
fn a_port_docker_does_not_publish_meets_its_per_bridge_drop() {
    // The DNAT is there but the container port has no ACCEPT: DOCKER's final DROP takes it.
    let lab = docker28_lab("iso-unpub", |t| {
        t.replace("--dport 5000 -j ACCEPT", "--dport 5999 -j ACCEPT")
    });
    assert_unpublished_drop(
        &lab,
        "filter DOCKER rule 2: ! -i docker0 -o docker0 -j DROP",
    );
}

/// The published port's packets die in FORWARD on Docker's unpublished-port drop (`rule`):
/// Docker's isolation, fixed by publishing the port, never by removing the rule; `check`
/// names the same rule with the same remedy.
fn assert_unpublished_drop(lab: &Lab, rule_part: &str) {
    let (seen, out) = watch(lab, PUBLISHED);
    assert_eq!(seen, Outcome::Timeout, "{}", out.dump());
    let v = common::one_verdict(&out);
    assert_eq!(v["cause"], "engine_isolation", "{v:#}");
    assert_eq!(v["proximate"]["hook"], "FORWARD", "{v:#}");
    let rule = v["proximate"]["rule"].as_str().unwrap_or_default();
    assert!(rule.contains(rule_part), "{rule}");
    let fix = v["fix"].as_str().unwrap_or_default();
    assert!(fix.contains("-p 5000:5000"), "{v:#}");
    assert_no_rule_removal(&v);
    let (_, finding) = common::check_finding(&lab.host, 5000, "engine_isolation");
    assert_no_rule_removal(&finding);
}

#[test]
fn control_the_published_port_through_the_host_passes_docker28s_rules() {
    let lab = docker28_lab("iso-ctl", str::to_string);
    let (seen, out) = watch(&lab, PUBLISHED);
    assert_eq!(seen, Outcome::Http(200), "{}", out.dump());
    assert!(out.of_type("verdict").is_empty(), "{}", out.dump());
}

const DOCKER29: &str = include_str!("../tracer/src/observe/state/testdata/docker29-layout.nft");

/// The lab with Docker 29's nftables backend layout (`table ip docker-bridges`) in place of
/// the lab's iptables rules (`edit` changes it first).
fn docker29_lab(label: &str, edit: impl Fn(&str) -> String) -> Lab {
    require_root();
    let lab = Lab::up(LabSpec::new(label)).unwrap_or_else(|e| panic!("building the lab: {e}"));
    lab.exec(&lab.host, &["nft", "flush", "ruleset"])
        .expect("nft flush ruleset");
    lab.exec_with_input(&lab.host, &["nft", "-f", "-"], &edit(DOCKER29))
        .expect("nft -f of Docker 29's layout");
    lab
}

#[test]
fn docker29s_nftables_direct_access_drop_is_its_protection() {
    let lab = docker29_lab("iso29-direct", str::to_string);
    assert_direct_access_drop(&lab, &["docker-bridges", "raw-PREROUTING"]);
}

#[test]
fn docker29s_nftables_unpublished_port_drop_is_its_isolation() {
    let lab = docker29_lab("iso29-unpub", |t| {
        t.replace(
            "tcp dport 5000 counter accept",
            "tcp dport 5999 counter accept",
        )
    });
    assert_unpublished_drop(&lab, "filter-forward-in__docker0");
}

#[test]
fn control_the_published_port_through_the_host_passes_docker29s_rules() {
    let lab = docker29_lab("iso29-ctl", str::to_string);
    let (seen, out) = watch(&lab, PUBLISHED);
    assert_eq!(seen, Outcome::Http(200), "{}", out.dump());
    assert!(out.of_type("verdict").is_empty(), "{}", out.dump());
}
