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
    attribute::{Cause, Context, DropFacts, Hook},
    cmd::check::{self, Facts},
    discover::{self, PublishedPort},
    report::words::attribute,
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
    vec![PublishedPort::docker_web()]
}

fn drop(reason: &str, dst: &str, dnat: Option<bool>, hook: Option<Hook>) -> DropFacts {
    DropFacts {
        reason: reason.into(),
        inferred: None,
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
        route: None,
        tcp_flags: 0x02,
        len: 60,
        routing_answer: None,
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
    assert_eq!(
        a.cause,
        Cause::EngineIsolation,
        "Docker's protection: {}",
        a.sentence
    );
    assert!(!a.fix.contains("remove"), "{}", a.fix);
    assert_eq!(a.hook, Some(Hook::PreRouting));
    assert!(
        a.rule
            .unwrap()
            .contains("raw PREROUTING rule 1: -d 172.17.0.2/32 ! -i docker0 -j DROP")
    );
}

#[test]
fn docker29_direct_access_drop_is_dockers_protection_in_nftables_too() {
    let snap = snapshot(Layout::V29, str::to_string);
    let a = attribute(
        &drop("NETFILTER_DROP", "172.17.0.2", None, Some(Hook::PreRouting)),
        &snap,
        &ctx(),
    );
    assert_eq!(a.cause, Cause::EngineIsolation, "{}", a.sentence);
    assert!(a.rule.unwrap().contains("chain raw-PREROUTING"));
    assert!(a.fix.contains("allow-direct-routing") && !a.fix.contains("remove"));
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
    assert_eq!(a.cause, Cause::EngineIsolation, "{}", a.sentence);
    assert!(a.fix.contains("docker run -p 5000:5000"), "{}", a.fix);
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
    assert_eq!(a.cause, Cause::EngineIsolation, "{}", a.sentence);
    let rule = a.rule.unwrap();
    assert!(
        rule.contains("table ip docker-bridges chain filter-forward-in__docker0"),
        "{rule}"
    );
    assert!(rule.ends_with("drop"), "{rule}");
}

/// netavark (Podman) publishing `-p 5001:5000`: the real 1.4 iptables driver's rules with
/// netavark's INVALID drop and a user's FORWARD drop of the container port
/// (testdata/netavark14-iptables-nft-save-forward-drop.txt), and the nftables driver's layout
/// with a user's drop in a table of its own (testdata/netavark14-nft-list-ruleset.json).
mod netavark {
    use super::*;
    use crate::attribute::{
        Why, diagnose,
        rules::{Blamed, How},
    };

    const IPT: &str = include_str!("testdata/netavark14-iptables-nft-save-forward-drop.txt");
    const NFT: &str = include_str!("testdata/netavark14-nft-list-ruleset.json");
    const USER_RULE: &str = "[0:0] -A FORWARD -d 10.88.0.2/32 -p tcp -m tcp --dport 5000 -j DROP";
    const INVALID_RULE: &str = "[0:0] -A NETAVARK_FORWARD -m conntrack --ctstate INVALID -j DROP";

    fn snap(ipt: Option<&str>, nft_json: Option<&str>) -> Snapshot {
        let mut s = snapshot(Layout::V20, str::to_string);
        s.local_addrs = vec![
            "198.51.100.1".parse().unwrap(),
            "10.88.0.1".parse().unwrap(),
        ];
        s.iptables = ipt
            .map(|t| vec![iptables::parse("iptables-nft", t)])
            .unwrap_or_default();
        s.nft = nft_json.map(|j| nft::parse(j).unwrap()).unwrap_or_default();
        s
    }

    /// A SYN to 198.51.100.1:5001, DNATed to 10.88.0.2:5000 and dropped in FORWARD.
    fn forwarded_drop() -> DropFacts {
        DropFacts {
            orig_dst: Some("198.51.100.1".parse().unwrap()),
            orig_dport: Some(5001),
            ..drop(
                "NETFILTER_DROP",
                "10.88.0.2",
                Some(true),
                Some(Hook::Forward),
            )
        }
    }

    fn ctx_5001(before: &Snapshot) -> Context<'_> {
        Context {
            port: 5001,
            before: Some(before),
            engine: Some("podman"),
            published_elsewhere: true,
            ..Context::default()
        }
    }

    fn blamed(why: &Why) -> &Blamed {
        why.blamed()
            .unwrap_or_else(|| panic!("nothing blamed: {why:?}"))
    }

    #[test]
    fn the_ports_netavark_publishes_are_found_from_either_driver() {
        for s in [snap(Some(IPT), None), snap(None, Some(NFT))] {
            let found = discover::from_rules(&s);
            assert_eq!(found.len(), 1, "{found:#?}");
            assert_eq!(
                (found[0].host_port, found[0].container_port),
                (5001, Some(5000))
            );
            assert_eq!(found[0].container_ip, Some("10.88.0.2".parse().unwrap()));
            assert_eq!(found[0].proto, "tcp");
        }
    }

    #[test]
    fn the_users_rule_for_the_container_port_is_blamed_when_both_counters_rose() {
        let before = snap(Some(IPT), None);
        let rose = IPT
            .replace(USER_RULE, &USER_RULE.replace("[0:0]", "[4:240]"))
            .replace(INVALID_RULE, &INVALID_RULE.replace("[0:0]", "[9:540]"));
        let now = snap(Some(&rose), None);
        let d = diagnose(&forwarded_drop(), &now, &ctx_5001(&before));
        let b = blamed(&d.why);
        assert!(b.rule.text.contains("filter FORWARD rule 1"), "{b:?}");
        assert_eq!(b.how, How::CounterRose { from: 0, to: 4 });
        assert_eq!(d.why.cause(), Cause::FirewallDrop);
    }

    #[test]
    fn without_counters_the_rule_naming_the_container_port_wins() {
        let now = snap(Some(IPT), None);
        let d = diagnose(&forwarded_drop(), &now, &ctx_5001(&now));
        let b = blamed(&d.why);
        assert!(b.rule.text.contains("filter FORWARD rule 1"), "{b:?}");
        assert_eq!(b.how, How::NamesPort);
        let nft = snap(None, Some(NFT));
        let d = diagnose(&forwarded_drop(), &nft, &ctx_5001(&nft));
        let b = blamed(&d.why);
        assert!(
            b.rule.text.contains("table inet blocker chain forward"),
            "{b:?}"
        );
    }

    #[test]
    fn two_rules_that_cannot_be_told_apart_are_listed_not_guessed() {
        // The user's rule matches the container's address only: it names no port, and both
        // its counter and netavark's INVALID drop's rose.
        let by_addr = IPT.replace(USER_RULE, "[0:0] -A FORWARD -d 10.88.0.2/32 -p tcp -j DROP");
        let before = snap(Some(&by_addr), None);
        let rose = by_addr
            .replace(
                "[0:0] -A FORWARD -d 10.88.0.2/32 -p tcp -j DROP",
                "[4:240] -A FORWARD -d 10.88.0.2/32 -p tcp -j DROP",
            )
            .replace(INVALID_RULE, &INVALID_RULE.replace("[0:0]", "[9:540]"));
        let now = snap(Some(&rose), None);
        let a = attribute(&forwarded_drop(), &now, &ctx_5001(&before));
        assert!(
            matches!(blamed(&a.why).how, How::Ambiguous { .. }),
            "{:?}",
            a.why
        );
        assert_eq!(a.rule, None, "no rule is blamed: {a:#?}");
        assert_eq!(a.rule_candidates.len(), 2, "{a:#?}");
        assert!(a.rule_candidates.iter().any(|r| r.contains("INVALID")));
        assert!(a.fix.contains("--trace-rules"), "{}", a.fix);
    }

    #[test]
    fn check_evaluates_forward_rules_against_the_container_port() {
        let published = discover::from_rules(&snap(Some(IPT), None));
        let f = check::check(&snap(Some(IPT), None), &published, &Facts::default());
        assert_eq!(f.len(), 1, "{f:#?}");
        let check::Detail::Blocked { hook, rule } = &f[0].detail else {
            panic!("{f:#?}")
        };
        assert_eq!(*hook, Hook::Forward);
        assert!(rule.text.contains("--dport 5000"), "{rule:?}");
        let nft = snap(None, Some(NFT));
        let f = check::check(&nft, &discover::from_rules(&nft), &Facts::default());
        assert!(
            f.iter().any(|f| f.what.contains("table inet blocker")),
            "{f:#?}"
        );
        assert!(!f.iter().any(|f| f.what.contains("invalid")), "{f:#?}");
    }

    #[test]
    fn a_missing_podman_dnat_is_fixed_the_podman_way() {
        let mut d = drop("NO_SOCKET", "198.51.100.1", Some(false), None);
        d.dport = 5001;
        let empty = snap(None, None);
        let a = attribute(&d, &empty, &ctx_5001(&empty));
        assert_eq!(a.cause, Cause::MissingChain);
        assert!(a.fix.contains("podman network reload"), "{}", a.fix);
    }
}
