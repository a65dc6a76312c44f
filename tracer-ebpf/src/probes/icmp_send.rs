//! ICMP errors the kernel sends about a packet: what tells a REJECT (icmp-host-prohibited =
//! 3/10, icmp-admin-prohibited = 3/13, port-unreachable = 3/3) from a silent DROP.
//!
//! tp_btf icmp_send (Linux >= 6.14; optional, probed at start):
//!   TP_PROTO(const struct sk_buff *skb, int type, int code)   -- skb is the offending packet
//!   checked on 6.18.
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::skb::on_icmp_send;

#[btf_tracepoint(function = "icmp_send")]
pub fn icmp_send(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    let icmp_type: u64 = ctx.arg(1);
    let icmp_code: u64 = ctx.arg(2);
    on_icmp_send(skb, icmp_type as u8, icmp_code as u8);
    0
}
