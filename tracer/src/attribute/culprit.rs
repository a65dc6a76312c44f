//! Which change seen during the run explains a verdict: the sysctl write that turned
//! forwarding off, the ruleset change that removed the nat chain, the rule that was added.
use super::Why;
use crate::observe::changes::ChangeRecord;

/// Whether a change made by someone explains this cause (a kernel drop only when it is
/// about a sysctl, like the reverse-path filter).
pub fn needs_culprit(why: &Why) -> bool {
    match why {
        Why::KernelDrop { rp_filter } => rp_filter.is_some(),
        // Load fills the table; a lowered limit is a change.
        Why::ConntrackFull { .. } => true,
        // The engine's design, not a change: its remedy is in the fix.
        Why::EngineIsolation { .. } => false,
        // MTUs and ICMP rules are not recorded changes: the note says where to look.
        Why::PathMtu { .. } => true,
        Why::BridgeNetfilterOff { .. } => true,
        // Someone who turned tracking strict (loose or be_liberal to 0) explains it; else
        // a lost entry or an out-of-window segment is no one's change (the note says where
        // to look).
        Why::ConntrackInvalid { .. } => true,
        _ => true,
    }
}

/// A sysctl write to a smaller number.
fn lowered(c: &ChangeRecord) -> bool {
    let num = |v: &Option<String>| v.as_deref().and_then(|v| v.trim().parse::<u64>().ok());
    matches!((num(&c.old), num(&c.new)), (Some(old), Some(new)) if new < old)
}

/// The most recent change that explains the verdict.
pub fn culprit_for<'a>(why: &Why, changes: &'a [ChangeRecord]) -> Option<&'a ChangeRecord> {
    let mut rev = changes.iter().rev();
    let ruleset = |c: &&ChangeRecord| c.source != "sysctl";
    match why {
        // The last write that sent bridged frames past iptables.
        Why::BridgeNetfilterOff { .. } => rev.find(|c| {
            c.source == "sysctl"
                && c.key.as_deref() == Some(super::BRIDGE_NF_IPTABLES)
                && c.new.as_deref() == Some("0")
        }),
        // The last write that lowered the limit.
        Why::ConntrackFull { .. } => rev.find(|c| {
            c.source == "sysctl"
                && c.key.as_deref() == Some("net.netfilter.nf_conntrack_max")
                && lowered(c)
        }),
        // The last write that turned mid-stream pickup or window liberality off.
        Why::ConntrackInvalid { .. } => rev.find(|c| {
            let key = c.key.as_deref().unwrap_or_default();
            c.source == "sysctl"
                && (key.ends_with(".nf_conntrack_tcp_loose")
                    || key.ends_with(".nf_conntrack_tcp_be_liberal"))
                && c.new.as_deref() == Some("0")
        }),
        // The last change that took the bridge's address, its route or the bridge itself
        // away (rtnetlink); what the kernel did itself (port 0) only follows someone's.
        Why::RouteLost { bridge, .. } => rev.find(|c| {
            c.source == "rtnetlink"
                && c.key.as_deref() == Some(bridge.name.as_str())
                && c.new.is_none()
                && c.process.captured != "none"
        }),
        // The write that turned IPv6 forwarding on (the kernel then purged the advertised
        // route) or set an uplink's accept_ra below 2.
        Why::RaIgnored { uplinks, .. } => rev.find(|c| {
            let key = c.key.as_deref().unwrap_or_default();
            let on_uplink = |leaf: &str| {
                uplinks
                    .iter()
                    .any(|u| key == format!("net.ipv6.conf.{u}.{leaf}"))
            };
            let forwarding_on = (key == "net.ipv6.conf.all.forwarding" || on_uplink("forwarding"))
                && c.new.as_deref() == Some("1");
            let ra_host_only = on_uplink("accept_ra") && c.new.as_deref() != Some("2");
            c.source == "sysctl" && (forwarding_on || ra_host_only)
        }),
        // MTUs and ICMP rules are not recorded changes; the engine's isolation is its design.
        Why::EngineIsolation { .. } | Why::PathMtu { .. } => None,
        Why::ForwardingDisabled { sysctl: key, .. } => {
            // The family's `conf.all.forwarding` turns every interface's off with it.
            let family = key.split('.').take(2).collect::<Vec<_>>().join(".");
            let all_key = format!("{family}.conf.all.forwarding");
            rev.find(|c| {
                c.source == "sysctl"
                    && c.new.as_deref() == Some("0")
                    && (c.key.as_deref() == Some(key) || c.key.as_deref() == Some(&all_key))
            })
        }
        Why::KernelDrop { .. } => {
            let key = why.sysctl()?;
            rev.find(|c| c.key.as_deref() == Some(key))
        }
        Why::MissingChain { .. } => rev.filter(ruleset).find(|c| {
            let nat_removed = c.changes.iter().any(|x| {
                (x.starts_with("delete ") || x.starts_with("flush ") || x.starts_with("removed "))
                    && (x.contains(" nat ") || x.ends_with(" nat"))
            });
            nat_removed || c.what.contains("flush ruleset")
        }),
        Why::Firewall { .. } => rev.filter(ruleset).find(|c| {
            c.source == "iptables-legacy"
                || c.changes.iter().any(|x| {
                    [
                        "add rule",
                        "add chain",
                        "delete rule",
                        "flush ",
                        "removed rule",
                        "added rule",
                        "policy ",
                    ]
                    .iter()
                    .any(|p| x.starts_with(p))
                })
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribute::{Died, RpFilter, rules::Missing};

    fn sysctl(key: &str, old: &str, new: &str, pid: u32) -> ChangeRecord {
        let mut c = ChangeRecord {
            source: "sysctl".into(),
            what: format!("{key} {old} -> {new}"),
            key: Some(key.into()),
            old: Some(old.into()),
            new: Some(new.into()),
            ..ChangeRecord::default()
        };
        c.process.pid = pid;
        c
    }

    fn nft(changes: &[&str], pid: u32) -> ChangeRecord {
        let mut c = ChangeRecord {
            source: "nftables".into(),
            what: changes.join("; "),
            changes: changes.iter().map(|s| s.to_string()).collect(),
            ..ChangeRecord::default()
        };
        c.process.pid = pid;
        c
    }

    fn forwarding(key: &str) -> Why {
        Why::ForwardingDisabled {
            sysctl: key.into(),
            still_off: true,
        }
    }

    fn pid(c: Option<&ChangeRecord>) -> Option<u32> {
        c.map(|c| c.process.pid)
    }

    #[test]
    fn forwarding_is_blamed_on_the_last_write_that_turned_it_off() {
        let changes = [
            sysctl("net.ipv4.ip_forward", "1", "0", 10),
            sysctl("net.ipv4.ip_forward", "0", "1", 11),
            sysctl("net.ipv4.ip_forward", "1", "0", 12),
            sysctl("net.ipv4.ip_forward", "0", "1", 13),
            nft(&["add rule ip filter FORWARD drop"], 14),
        ];
        let why = forwarding("net.ipv4.ip_forward");
        assert_eq!(pid(culprit_for(&why, &changes)), Some(12));
        let v6 = forwarding("net.ipv6.conf.all.forwarding");
        assert_eq!(pid(culprit_for(&v6, &changes)), None, "another family");
    }

    #[test]
    fn an_interface_is_also_turned_off_through_its_familys_all_switch() {
        let changes = [sysctl("net.ipv4.conf.all.forwarding", "1", "0", 20)];
        let why = forwarding("net.ipv4.conf.eth-ext.forwarding");
        assert_eq!(pid(culprit_for(&why, &changes)), Some(20));
    }

    #[test]
    fn a_missing_chain_is_blamed_on_the_nat_removal_not_a_filter_change() {
        let changes = [
            nft(&["delete chain ip nat DOCKER"], 30),
            nft(&["add rule ip filter INPUT drop"], 31),
            sysctl("net.ipv4.ip_forward", "1", "0", 32),
        ];
        let why = Why::MissingChain {
            missing: Missing::NoDnat,
            died: Died::NoListener,
        };
        assert_eq!(pid(culprit_for(&why, &changes)), Some(30));
    }

    #[test]
    fn a_firewall_drop_is_blamed_on_a_rule_change_or_a_legacy_replace() {
        let why = Why::Firewall {
            hook: crate::observe::facts::Hook::Forward,
            blamed: None,
            reject: false,
            forwarding_also_off: false,
        };
        let changes = [
            nft(&["add rule inet blocker fwd drop"], 40),
            sysctl("net.ipv4.ip_forward", "1", "0", 41),
        ];
        assert_eq!(pid(culprit_for(&why, &changes)), Some(40));
        let mut legacy = nft(&[], 42);
        legacy.source = "iptables-legacy".into();
        assert_eq!(pid(culprit_for(&why, &[legacy])), Some(42));
        assert_eq!(
            pid(culprit_for(&why, &[nft(&["add table ip x"], 43)])),
            None
        );
    }

    #[test]
    fn conntrack_verdicts_are_blamed_on_the_write_that_made_them() {
        use crate::observe::state::conntrack::Fill;
        let full = Why::ConntrackFull {
            fill: Fill {
                count: 64,
                max: 64,
                buckets: None,
            },
            stats: None,
            refused_since_start: None,
        };
        let changes = [
            sysctl("net.netfilter.nf_conntrack_max", "64", "262144", 1),
            sysctl("net.netfilter.nf_conntrack_max", "262144", "64", 2),
            sysctl("net.netfilter.nf_conntrack_tcp_loose", "1", "0", 3),
        ];
        assert_eq!(
            pid(culprit_for(&full, &changes)),
            Some(2),
            "the write that lowered it"
        );
        let invalid = Why::ConntrackInvalid {
            dnat: "iptables-nft ip nat DOCKER rule 2".into(),
            rule: None,
            invalid_since_start: None,
            liberal: Some("0".into()),
            loose: Some("0".into()),
        };
        assert_eq!(pid(culprit_for(&invalid, &changes)), Some(3));
        assert_eq!(pid(culprit_for(&invalid, &changes[..2])), None);
    }

    #[test]
    fn only_kernel_drops_about_a_sysctl_look_for_a_culprit() {
        assert!(!needs_culprit(&Why::KernelDrop { rp_filter: None }));
        let rp = Why::KernelDrop {
            rp_filter: Some(RpFilter {
                all: Some("1".into()),
                iface_key: "net.ipv4.conf.eth-ext.rp_filter".into(),
                iface: Some("1".into()),
                watched: "net.ipv4.conf.eth-ext.rp_filter".into(),
            }),
        };
        assert!(needs_culprit(&rp));
        let changes = [sysctl("net.ipv4.conf.eth-ext.rp_filter", "2", "1", 50)];
        assert_eq!(pid(culprit_for(&rp, &changes)), Some(50));
        assert!(needs_culprit(&forwarding("net.ipv4.ip_forward")));
    }
}
