//! RSTs sent by the TCP stack: a closed port (NO_SOCKET) answers a SYN with one. A firewall's
//! `REJECT --reject-with tcp-reset` builds its own RST and does not pass here.
//!
//! tp_btf tcp_send_reset (optional, probed at start). Userspace loads the one program whose
//! prototype matches the running kernel's `btf_trace_tcp_send_reset`:
//!   since 6.10: TP_PROTO(const struct sock *sk, const struct sk_buff *skb,
//!                        const enum sk_rst_reason reason)        -- checked on 6.12, 6.18
//!   before:     TP_PROTO(const struct sock *sk, const struct sk_buff *skb)  -- checked on 6.1
//!   A program that reads an argument the kernel does not have is refused by the verifier.
//!   skb is the packet being answered; NULL for a RST on a socket without one (then skipped).
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::RST_REASON_UNKNOWN;

use crate::skb::on_rst;

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(1);
    let reason: u64 = ctx.arg(2);
    on_rst(skb, reason as u32);
    0
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset_no_reason(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(1);
    on_rst(skb, RST_REASON_UNKNOWN);
    0
}
