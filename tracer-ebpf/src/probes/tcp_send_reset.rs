//! RSTs sent by the TCP stack: a closed port (NO_SOCKET) answers a SYN with one. A firewall's
//! `REJECT --reject-with tcp-reset` builds its own RST and does not pass here.
//!
//! tp_btf tcp_send_reset (rst reason argument since Linux 6.10; optional, probed at start):
//!   TP_PROTO(const struct sock *sk, const struct sk_buff *skb, const enum sk_rst_reason reason)
//!   skb is the packet being answered; NULL for a RST on a socket without one (then skipped).
//!   checked on 6.18.
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::skb::on_rst;

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(1);
    let reason: u64 = ctx.arg(2);
    on_rst(skb, reason as u32);
    0
}
