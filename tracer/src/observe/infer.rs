//! On a kernel that reports no drop reasons (before Linux 5.17), what the function that freed
//! a packet says about why. One table, each entry with the kernels it was checked on (in the
//! `cargo xtask vm` guests, by the fault the integration tests inject). A function not in it
//! is reported by its name and never guessed.
use serde::Serialize;

/// A reason inferred from the freeing function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Inferred {
    /// The drop reason a kernel with reasons gives the same drop (`NETFILTER_DROP`).
    pub reason: &'static str,
    /// Where it was inferred from: the function in the drop's `location`.
    pub from: &'static str,
    pub function: String,
    /// The kernels the entry was checked on.
    pub checked_on: &'static str,
    /// What else the same function drops, when it is not only this reason.
    pub or_else: Option<&'static str>,
}

/// (function, reason, kernels it was checked on, what else the function drops).
type Entry = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
);

const BY_FUNCTION: &[Entry] = &[
    // Forwarding refused by the routing step (ip_forward or the interface's forwarding off).
    ("ip_error", "IP_INADDRERRORS", "5.10", None),
    // The same for IPv6: forwarding off for the packet's interface.
    (
        "ip6_forward",
        "IP_INADDRERRORS",
        "5.10",
        Some("a hop limit exceeded or a packet too big (both answered with ICMPv6)"),
    ),
    // A netfilter verdict NF_DROP (iptables, nftables, a REJECT after its answer).
    ("nf_hook_slow", "NETFILTER_DROP", "5.10", None),
    // No socket for the segment: a closed port.
    (
        "tcp_v4_rcv",
        "NO_SOCKET",
        "5.10",
        Some("a segment TCP discards as malformed, or a late FIN/RST of a closed connection"),
    ),
    (
        "tcp_v6_rcv",
        "NO_SOCKET",
        "not yet",
        Some("a segment TCP discards as malformed, or a late FIN/RST of a closed connection"),
    ),
    (
        "__udp4_lib_rcv",
        "NO_SOCKET",
        "not yet",
        Some("a datagram with a bad checksum"),
    ),
    (
        "__udp6_lib_rcv",
        "NO_SOCKET",
        "not yet",
        Some("a datagram with a bad checksum"),
    ),
    // The input route refused the packet: the reverse-path filter (the -EXDEV case) …
    (
        "ip_rcv_finish_core",
        "IP_RPFILTER",
        "5.10",
        Some("another input-route refusal (a martian or invalid source address)"),
    ),
];

/// What the freeing `function` says, if it is one droptrace knows. The compiler's clones
/// (`ip_rcv_finish_core.constprop.0`, `.isra.0`, `.part.0`) are the same function.
pub fn from_function(function: &str) -> Option<Inferred> {
    let base = function.split('.').next().unwrap_or(function);
    BY_FUNCTION
        .iter()
        .find(|(f, ..)| *f == base)
        .map(|(_, reason, checked_on, or_else)| Inferred {
            reason,
            from: "location",
            function: function.to_string(),
            checked_on,
            or_else: *or_else,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_functions_name_a_reason_and_unknown_ones_none() {
        let nf = from_function("nf_hook_slow").expect("known");
        assert_eq!(nf.reason, "NETFILTER_DROP");
        assert_eq!(nf.function, "nf_hook_slow");
        assert_eq!(
            from_function("ip_error").map(|i| i.reason),
            Some("IP_INADDRERRORS")
        );
        assert_eq!(from_function("skb_release_data"), None, "never guessed");
        let rp = from_function("ip_rcv_finish_core.constprop.0").expect("a clone");
        assert_eq!(rp.reason, "IP_RPFILTER");
        assert_eq!(rp.function, "ip_rcv_finish_core.constprop.0");
        assert!(rp.or_else.is_some());
    }
}
