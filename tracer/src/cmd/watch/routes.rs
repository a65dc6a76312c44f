//! Verdicts no drop makes: a watched port's DNATed packets that the kernel routes away from
//! their container's bridge (its address and connected route lost) may leave the namespace
//! without dying in it, so no drop's diagnosis ever sees them. The kernel side keeps each
//! routing decision for a watched port (ROUTES); about once a second they are checked against
//! where the container's address belongs.
use std::{collections::HashMap, io, net::IpAddr, time::Instant};

use tracer_common::{AF_INET, RouteSample};

use super::observer::{Observer, TICK};
use crate::{
    attribute::{
        Cause, Diagnosis, DropFacts, Hook, bridge_netfilter_off, route_lost, routes,
        verdict::{ROUTED_AWAY, Seen},
    },
    load::ebpf::Tracer,
    observe::{event::rfc3339, facts::RouteFact, state::Snapshot},
    report::words,
};

impl Observer<'_> {
    /// Checks the kernel's routing decisions for the watched ports' container addresses; a
    /// decision that routes one away from its lost bridge opens a `route_lost` verdict.
    pub async fn check_routes(&mut self, tracer: &Tracer) -> io::Result<()> {
        if self.routes_checked.elapsed() < TICK {
            return Ok(());
        }
        self.routes_checked = Instant::now();
        let state = self.latest.as_ref().map_or(&self.before, |(_, s)| s);
        let targets = self.container_addresses(state);
        let routes = tracer.routes();
        // The one setting a hairpin flow depends on, read now (a file, not a snapshot), and
        // only when there is one.
        let bridge_nf_off = routes.iter().any(|r| hairpin(state, r)) && {
            let read = self.netns.run_in(|| {
                std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables").ok()
            });
            read.ok().flatten().is_none_or(|v| v.trim() != "1")
        };
        let suspects: Vec<(RouteSample, u16)> = routes
            .into_iter()
            .filter_map(|r| {
                let port = *targets.get(&ipv4(&r)?)?;
                let suspect = match r.err == 0 {
                    true if routed_away(state, &r) => Some(Cause::RouteLost),
                    true if bridge_nf_off && hairpin(state, &r) => Some(Cause::BridgeNetfilterOff),
                    _ => None,
                }?;
                (!self.book.has(port, suspect)).then_some((r, port))
            })
            .collect();
        if suspects.is_empty() {
            return Ok(());
        }
        // Confirmed against fresh state: the address may be back.
        self.refresh_snapshot().await;
        for (sample, port) in suspects {
            let now = &self.latest.as_ref().expect("refreshed").1;
            let Some(facts) = facts_of(&sample, now) else {
                continue;
            };
            let Some(why) = route_lost(&facts, now).or_else(|| bridge_netfilter_off(&facts, now))
            else {
                continue;
            };
            let ctx = self.context(port);
            let diag = Diagnosis {
                why,
                hook: Some(Hook::Routing),
            };
            let a = words::explain(&facts, diag, &ctx);
            let time = rfc3339(self.namer.clock.wall(sample.ktime_ns));
            let container = self.container_of(port);
            let seen = Seen {
                port,
                proto: &facts.proto,
                time: &time,
                netns: self.netns.inode,
                container,
            };
            if let Some(verdict) = self.book.add_routed(seen, &a) {
                self.new_verdict(port, verdict, &a, tracer).await?;
            }
        }
        Ok(())
    }

    /// Container address → the watched port DNATed to it (the engine's, and the rules').
    fn container_addresses(&self, state: &Snapshot) -> HashMap<IpAddr, u16> {
        let mut out = HashMap::new();
        for &port in &self.ports {
            for d in state.dnats_for(port) {
                if let Some((addr, _)) = d.to {
                    out.insert(addr, port);
                }
            }
            for p in self.published.iter().filter(|p| p.host_port == port) {
                if let Some(addr) = p.container_ip {
                    out.insert(addr, port);
                }
            }
        }
        out
    }

    fn container_of(&self, port: u16) -> Option<String> {
        self.published
            .iter()
            .find(|p| p.host_port == port)
            .and_then(|p| p.container.clone())
    }
}

fn ipv4(r: &RouteSample) -> Option<IpAddr> {
    (r.family == AF_INET).then(|| IpAddr::from([r.daddr[0], r.daddr[1], r.daddr[2], r.daddr[3]]))
}

/// A decision that sends a container address anywhere but to a subnet this namespace holds.
fn routed_away(state: &Snapshot, r: &RouteSample) -> bool {
    ipv4(r).is_some_and(|dst| !state.is_local(&dst) && routes::connected(state, &dst).is_none())
}

/// A decision that sends a packet back out the interface it came in on.
fn hairpin(state: &Snapshot, r: &RouteSample) -> bool {
    r.iif != 0
        && r.iif == r.oif
        && state
            .ifnames
            .get(&r.iif)
            .is_some_and(|n| routes::is_bridge(n))
}

/// The routed packet as the engine sees a drop's facts: DNATed, not dropped here; its
/// ingress interface named from `state`.
fn facts_of(r: &RouteSample, state: &Snapshot) -> Option<DropFacts> {
    let dst = ipv4(r)?;
    let src = IpAddr::from([r.saddr[0], r.saddr[1], r.saddr[2], r.saddr[3]]);
    let end = r.dev.iter().position(|b| *b == 0).unwrap_or(r.dev.len());
    let dev = String::from_utf8_lossy(&r.dev[..end]).into_owned();
    Some(DropFacts {
        reason: ROUTED_AWAY.into(),
        inferred: None,
        function: Some("fib_table_lookup".into()),
        location: "fib_table_lookup".into(),
        ipv6: false,
        proto: match r.proto {
            17 => "udp",
            _ => "tcp",
        }
        .into(),
        src,
        sport: r.sport,
        dst,
        dport: r.dport,
        ifname: state.ifnames.get(&r.iif).cloned().unwrap_or_default(),
        dnat: Some(true),
        orig_dst: None,
        orig_dport: None,
        answered: None,
        nf_hook: None,
        traced: None,
        route: Some(RouteFact {
            src,
            sport: r.sport,
            dst,
            dport: r.dport,
            table: r.table,
            dev,
            local: false,
        }),
        tcp_flags: 0,
        len: 0,
        routing_answer: None,
    })
}
