//! `--trace-rules`: the exact nf_tables rule that dropped a packet, from the kernel's own
//! rule tracing. Opt-in because it changes the ruleset: it adds one table,
//! `inet droptrace_trace`, whose prerouting chain (priority -350, before raw) sets
//! `meta nftrace` on watched ports, and runs `nft monitor trace` in the namespace. The table is
//! deleted on exit; a table left by a killed run is deleted at the next start (its name is
//! the tag). iptables-nft rules are nf_tables rules too, so they are traced the same way;
//! iptables-legacy rules are not (legacy TRACE only logs with nf_log_all_netns=1 in the root
//! namespace), and rule counters stay the evidence there.
use std::{
    collections::VecDeque,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::discover::netns::Netns;

pub const TRACE_TABLE: &str = "droptrace_trace";

/// A `(verdict drop)` or `policy drop` line of `nft monitor trace`, with the packet it was for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracedDrop {
    /// `ip filter DOCKER-USER rule tcp dport 5000 counter packets 0 bytes 0 drop`
    pub text: String,
    pub family: String,
    pub table: String,
    pub chain: String,
    pub policy: bool,
    pub saddr: Option<String>,
    pub sport: Option<u16>,
}

/// Per trace id: the packet's source (from its `packet:` line).
#[derive(Default)]
struct Parser {
    packets: Vec<(String, Option<String>, Option<u16>)>,
}

fn word_after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(key)? + key.len();
    line[at..].split_whitespace().next()
}

impl Parser {
    /// Feeds one line; returns a drop when the line is one.
    fn line(&mut self, line: &str) -> Option<TracedDrop> {
        let rest = line.strip_prefix("trace id ")?;
        let (id, rest) = rest.split_once(' ')?;
        let mut words = rest.splitn(4, ' ');
        let family = words.next()?.to_string();
        let table = words.next()?.to_string();
        let chain = words.next()?.to_string();
        let body = words.next()?.trim_end();
        if let Some(pkt) = body.strip_prefix("packet: ") {
            let saddr = word_after(pkt, "ip saddr ")
                .or_else(|| word_after(pkt, "ip6 saddr "))
                .map(str::to_string);
            let sport = word_after(pkt, "tcp sport ")
                .or_else(|| word_after(pkt, "udp sport "))
                .and_then(|p| p.parse().ok());
            if self.packets.len() > 512 {
                self.packets.remove(0);
            }
            self.packets.push((id.to_string(), saddr, sport));
            return None;
        }
        let (saddr, sport) = self
            .packets
            .iter()
            .rev()
            .find(|(i, _, _)| i == id)
            .map(|(_, a, p)| (a.clone(), *p))
            .unwrap_or((None, None));
        if body == "policy drop" {
            return Some(TracedDrop {
                text: format!("{family} {table} {chain} policy drop"),
                family,
                table,
                chain,
                policy: true,
                saddr,
                sport,
            });
        }
        let rule = body.strip_prefix("rule ")?;
        let (rule_text, verdict) = rule.rsplit_once(" (verdict ")?;
        if !verdict.starts_with("drop") {
            return None;
        }
        Some(TracedDrop {
            text: format!("{family} {table} {chain} rule {rule_text}"),
            family,
            table,
            chain,
            policy: false,
            saddr,
            sport,
        })
    }
}

/// Parses a block of `nft monitor trace` output (for fuzzing and tests).
pub fn parse_lines(text: &str) -> Vec<TracedDrop> {
    let mut p = Parser::default();
    text.lines().filter_map(|l| p.line(l)).collect()
}

pub struct RuleTracer {
    ns_arg: String,
    child: Option<Child>,
    seen: Arc<Mutex<VecDeque<(Instant, TracedDrop)>>>,
}

fn nft(ns_arg: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new("nsenter")
        .arg(ns_arg)
        .arg("nft")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run nsenter/nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`nft {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Deletes a trace table left behind by a killed run. Returns whether there was one.
pub fn remove_leftover(ns: &Netns) -> bool {
    let ns_arg = format!("--net={}", ns.path.display());
    nft(&ns_arg, &["delete", "table", "inet", TRACE_TABLE]).is_ok()
}

impl RuleTracer {
    /// Adds the trace table for `ports` and starts `nft monitor trace`.
    pub fn start(ns: &Netns, ports: &[u16]) -> Result<Self, String> {
        let ns_arg = format!("--net={}", ns.path.display());
        remove_leftover(ns);
        let set = ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let script = format!(
            "add table inet {TRACE_TABLE}\n\
             add chain inet {TRACE_TABLE} trace_pre {{ type filter hook prerouting priority -350; policy accept; }}\n\
             add rule inet {TRACE_TABLE} trace_pre tcp dport {{ {set} }} meta nftrace set 1\n\
             add rule inet {TRACE_TABLE} trace_pre udp dport {{ {set} }} meta nftrace set 1\n"
        );
        let mut add = Command::new("nsenter")
            .arg(&ns_arg)
            .args(["nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run nft: {e}"))?;
        if let Some(mut stdin) = add.stdin.take() {
            use std::io::Write;
            stdin
                .write_all(script.as_bytes())
                .map_err(|e| format!("nft -f -: {e}"))?;
        }
        let out = add.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "adding the trace table failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let mut child =
            match crate::observe::changes::spawn_monitor(ns, &["nft", "monitor", "trace"]) {
                Ok(c) => c,
                Err(e) => {
                    let _ = nft(&ns_arg, &["delete", "table", "inet", TRACE_TABLE]);
                    return Err(format!("cannot start nft monitor trace: {e}"));
                }
            };
        // Only once the monitor listens do traced packets reach us.
        if !crate::observe::changes::wait_subscribed(
            child.id(),
            crate::observe::changes::NFNLGRP_NFTRACE,
            Duration::from_secs(3),
        ) {
            let _ = child.kill();
            let _ = child.wait();
            let _ = nft(&ns_arg, &["delete", "table", "inet", TRACE_TABLE]);
            return Err("`nft monitor trace` did not subscribe within 3 s".into());
        }
        let seen: Arc<Mutex<VecDeque<(Instant, TracedDrop)>>> = Arc::default();
        if let Some(stdout) = child.stdout.take() {
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || {
                let mut parser = Parser::default();
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(drop) = parser.line(&line)
                        && let Ok(mut q) = seen.lock()
                    {
                        if q.len() >= 256 {
                            q.pop_front();
                        }
                        q.push_back((Instant::now(), drop));
                    }
                }
            });
        }
        Ok(Self {
            ns_arg,
            child: Some(child),
            seen,
        })
    }

    /// The traced drop of the packet from `saddr:sport`, waiting up to `wait` for the monitor
    /// (it reports asynchronously, usually within milliseconds).
    pub async fn find(&self, saddr: &str, sport: u16, wait: Duration) -> Option<TracedDrop> {
        let deadline = Instant::now() + wait;
        loop {
            if let Ok(q) = self.seen.lock()
                && let Some((_, d)) = q
                    .iter()
                    .rev()
                    .find(|(_, d)| d.saddr.as_deref() == Some(saddr) && d.sport == Some(sport))
            {
                return Some(d.clone());
            }
            if Instant::now() >= deadline {
                return None;
            }
            // The monitor thread fills `seen`; the event loop keeps serving meanwhile.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for RuleTracer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = nft(&self.ns_arg, &["delete", "table", "inet", TRACE_TABLE]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // `nft monitor trace` (nftables 1.0.6) for one SYN dropped by DOCKER-USER in the lab.
    const TRACE: &str = "\
trace id d021e3f1 inet droptrace_trace pre packet: iif \"eth-ext\" ether saddr 4e:c4:83:1c:e5:9f ether daddr 42:53:c5:f1:59:ca ip saddr 198.51.100.2 ip daddr 198.51.100.1 ip dscp cs0 ip ecn not-ect ip ttl 64 ip id 32430 ip protocol tcp ip length 60 tcp sport 39042 tcp dport 5000 tcp flags == syn tcp window 64240 
trace id d021e3f1 inet droptrace_trace pre rule tcp dport 5000 meta nftrace set 1 (verdict continue)
trace id d021e3f1 inet droptrace_trace pre policy accept 
trace id d021e3f1 ip nat DOCKER rule iifname != \"docker0\" tcp dport 5000 counter packets 0 bytes 0 dnat to 172.17.0.2:5000 (verdict accept)
trace id d021e3f1 ip filter FORWARD rule counter packets 0 bytes 0 jump DOCKER-USER (verdict jump DOCKER-USER)
trace id d021e3f1 ip filter DOCKER-USER rule tcp dport 5000 counter packets 0 bytes 0 drop (verdict drop)
trace id 00000002 ip filter FORWARD packet: iif \"eth-ext\" ip saddr 198.51.100.2 tcp sport 40000 tcp dport 5000
trace id 00000002 ip filter FORWARD policy drop 
";

    #[test]
    fn drops_and_policy_drops_are_tied_to_their_packet() {
        let mut p = Parser::default();
        let drops: Vec<TracedDrop> = TRACE.lines().filter_map(|l| p.line(l)).collect();
        assert_eq!(drops.len(), 2, "{drops:#?}");
        assert_eq!(
            drops[0].text,
            "ip filter DOCKER-USER rule tcp dport 5000 counter packets 0 bytes 0 drop"
        );
        assert_eq!(drops[0].saddr.as_deref(), Some("198.51.100.2"));
        assert_eq!(drops[0].sport, Some(39042));
        assert!(drops[1].policy);
        assert_eq!(drops[1].sport, Some(40000));
    }

    #[test]
    fn unrelated_lines_are_ignored() {
        let mut p = Parser::default();
        assert!(p.line("").is_none());
        assert!(p.line("trace id x").is_none());
        assert!(p.line("Error: something").is_none());
    }
}
