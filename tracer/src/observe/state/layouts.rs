//! The chain layouts of the Docker versions droptrace meets, each as real tool output, run
//! through discovery, the preflight and the attribution engine.
//!
//! - 20.10 (what Debian 12 ships; 24–27 write the same chains): `iptables-nft-save -c` of
//!   the lab's host with dockerd's rules (testdata/iptables-nft-save-docker-user-drop.txt with
//!   its DOCKER-USER DROP removed below).
//! - 28: DOCKER-FORWARD, DOCKER-CT, DOCKER-BRIDGE, a DROP for unpublished container ports in
//!   DOCKER and a raw PREROUTING drop of direct access to the container, written from the
//!   documented layout (testdata/docker28-layout.rules), loaded with `iptables-nft-restore`
//!   in a namespace and dumped with `iptables-nft-save -c`.
//! - 29 with `--firewall-backend=nftables`: table `ip docker-bridges` as documented in
//!   moby's nftablesdoc for a published port (testdata/docker29-layout.nft), loaded with
//!   `nft -f` and dumped with `nft -j list ruleset`.
use super::{Snapshot, Sysctls, iptables, nft};
use crate::{
    attribute::{Cause, Context, DropFacts, Hook, attribute},
    cmd::check::{self, Facts},
    discover::{self, PublishedPort},
};

const V20: &str = include_str!("testdata/iptables-nft-save-docker-user-drop.txt");
const V28: &str = include_str!("testdata/docker28-iptables-nft-save.txt");
const V29: &str = include_str!("testdata/docker29-nft-list-ruleset.json");

#[derive(Clone, Copy, Debug)]
enum Layout {
    V20,
    V28,
    V29,
}

fn snapshot(layout: Layout, edit: impl Fn(&str) -> String) -> Snapshot {
    let mut sysctls = Sysctls::default();
    sysctls.set("net.ipv4.ip_forward", "1");
    let mut snap = Snapshot {
        sysctls,
        interfaces: vec!["lo".into(), "eth-ext".into(), "docker0".into()],
        local_addrs: vec![
            "198.51.100.1".parse().unwrap(),
            "172.17.0.1".parse().unwrap(),
        ],
        ..Snapshot::default()
    };
    match layout {
        Layout::V20 => {
            let text = V20.replace(
                "[1:60] -A DOCKER-USER -p tcp -m tcp --dport 5000 -j DROP\n",
                "",
            );
            snap.iptables = vec![iptables::parse("iptables-nft", &edit(&text))];
        }
        Layout::V28 => snap.iptables = vec![iptables::parse("iptables-nft", &edit(V28))],
        Layout::V29 => snap.nft = nft::parse(&edit(V29)).expect("nft JSON"),
    }
    snap
}

fn published() -> Vec<PublishedPort> {
    vec![PublishedPort {
        host_ip: None,
        host_port: 5000,
        proto: "tcp".into(),
        container: Some("web".into()),
        container_id: None,
        container_ip: Some("172.17.0.2".parse().unwrap()),
        container_port: Some(5000),
        network: Some("bridge".into()),
        source: "docker",
    }]
}

fn drop(reason: &str, dst: &str, dnat: Option<bool>, hook: Option<Hook>) -> DropFacts {
    DropFacts {
        reason: reason.into(),
        function: Some(
            if reason == "NO_SOCKET" {
                "tcp_v4_rcv"
            } else {
                "nft_do_chain"
            }
            .into(),
        ),
        location: "x+0x1".into(),
        ipv6: false,
        proto: "tcp".into(),
        src: "198.51.100.2".parse().unwrap(),
        sport: 40000,
        dst: dst.parse().unwrap(),
        dport: 5000,
        ifname: "eth-ext".into(),
        dnat,
        orig_dst: None,
        orig_dport: None,
        answered: None,
        nf_hook: hook,
        traced: None,
    }
}

fn ctx() -> Context<'static> {
    Context {
        port: 5000,
        ..Context::default()
    }
}

#[test]
fn every_layout_is_healthy_as_docker_writes_it() {
    for layout in [Layout::V20, Layout::V28, Layout::V29] {
        let snap = snapshot(layout, str::to_string);
        let dnats = snap.dnats_for(5000);
        assert_eq!(dnats.len(), 1, "{layout:?}: {dnats:#?}");
        assert!(
            dnats[0].reachable,
            "{layout:?}: DNAT chain not reached from prerouting"
        );
        assert_eq!(
            dnats[0].to,
            Some(("172.17.0.2".parse().unwrap(), Some(5000))),
            "{layout:?}"
        );
        assert_eq!(snap.published_hints(5000).len(), 1, "{layout:?}");
        let findings = check::check(&snap, &published(), &Facts::default());
        assert!(findings.is_empty(), "{layout:?}: {findings:#?}");
        if !matches!(layout, Layout::V29) {
            assert_eq!(discover::from_rules(&snap).len(), 1, "{layout:?}");
        }
    }
}

#[test]
fn a_missing_dnat_is_missing_chain_in_every_layout() {
    let without_dnat = |t: &str| -> String {
        t.lines()
            .filter(|l| !l.contains("-j DNAT"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for layout in [Layout::V20, Layout::V28] {
        let snap = snapshot(layout, without_dnat);
        let a = attribute(
            &drop("NO_SOCKET", "198.51.100.1", Some(false), None),
            &snap,
            &ctx(),
        );
        assert_eq!(a.cause, Cause::MissingChain, "{layout:?}: {}", a.sentence);
        let findings = check::check(&snap, &published(), &Facts::default());
        assert_eq!(findings[0].cause, "missing_chain", "{layout:?}");
    }
    // Docker 29: drop the rule whose statement is a dnat from the JSON.
    let mut doc: serde_json::Value = serde_json::from_str(V29).unwrap();
    doc["nftables"]
        .as_array_mut()
        .unwrap()
        .retain(|o| !o.to_string().contains("\"dnat\""));
    let snap = snapshot(Layout::V29, |_| doc.to_string());
    let a = attribute(
        &drop("NO_SOCKET", "198.51.100.1", Some(false), None),
        &snap,
        &ctx(),
    );
    assert_eq!(a.cause, Cause::MissingChain, "v29: {}", a.sentence);
}

#[test]
fn docker28_direct_access_drop_is_named_in_raw_prerouting() {
    let snap = snapshot(Layout::V28, str::to_string);
    // A client routing straight to the container's address, past the published port.
    let a = attribute(
        &drop("NETFILTER_DROP", "172.17.0.2", None, Some(Hook::PreRouting)),
        &snap,
        &ctx(),
    );
    assert_eq!(a.cause, Cause::FirewallDrop);
    assert_eq!(a.hook, Some(Hook::PreRouting));
    assert!(
        a.rule
            .unwrap()
            .contains("raw PREROUTING rule 1: -d 172.17.0.2/32 ! -i docker0 -j DROP")
    );
}

#[test]
fn docker28_unpublished_port_drop_is_reached_through_docker_forward() {
    // The port's ACCEPT is gone; the DROP for unpublished ports counts the packet (as the
    // kernel's rule counters would while droptrace runs).
    let unpublished = |t: &str| t.replace("--dport 5000 -j ACCEPT", "--dport 5999 -j ACCEPT");
    let before = snapshot(Layout::V28, unpublished);
    let now = snapshot(Layout::V28, |t| {
        unpublished(t).replace(
            "[0:0] -A DOCKER ! -i docker0 -o docker0 -j DROP",
            "[1:60] -A DOCKER ! -i docker0 -o docker0 -j DROP",
        )
    });
    let c = Context {
        before: Some(&before),
        ..ctx()
    };
    let a = attribute(
        &drop(
            "NETFILTER_DROP",
            "172.17.0.2",
            Some(true),
            Some(Hook::Forward),
        ),
        &now,
        &c,
    );
    assert_eq!(a.cause, Cause::FirewallDrop);
    let rule = a.rule.unwrap();
    assert!(
        rule.contains("filter DOCKER rule 2: ! -i docker0 -o docker0 -j DROP"),
        "{rule}"
    );
}

#[test]
fn docker29_unpublished_port_drop_is_reached_through_the_verdict_map() {
    let snap = snapshot(Layout::V29, |t| {
        t.replace(
            "\"right\": 5000}}, {\"counter\": {\"packets\": 0, \"bytes\": 0}}, {\"accept\"",
            "\"right\": 5999}}, {\"counter\": {\"packets\": 0, \"bytes\": 0}}, {\"accept\"",
        )
    });
    assert!(
        snap.published_hints(5000).is_empty(),
        "the accept for 5000 was removed"
    );
    let a = attribute(
        &drop(
            "NETFILTER_DROP",
            "172.17.0.2",
            Some(true),
            Some(Hook::Forward),
        ),
        &snap,
        &ctx(),
    );
    assert_eq!(a.cause, Cause::FirewallDrop);
    let rule = a.rule.unwrap();
    assert!(
        rule.contains("table ip docker-bridges chain filter-forward-in__docker0"),
        "{rule}"
    );
    assert!(rule.ends_with("drop"), "{rule}");
}
