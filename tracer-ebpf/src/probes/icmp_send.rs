//! ICMP errors the kernel sends about a packet: what tells a REJECT (icmp-host-prohibited =
//! 3/10, icmp-admin-prohibited = 3/13, port-unreachable = 3/3) from a silent DROP.
//!
//! Three ways in, the first the kernel offers (userspace chooses):
//! - tp_btf icmp_send (Linux >= 6.14, backported to Debian's 6.1):
//!   TP_PROTO(const struct sk_buff *skb, int type, int code)  -- checked on 6.1, 6.18.
//! - fentry on `__icmp_send` (kernels without the tracepoint, with BPF trampolines):
//!   `void __icmp_send(struct sk_buff *skb_in, int type, int code, __be32 info, …)`
//!   -- the first three arguments are the same on 5.10, 6.1 and 6.12.
//! - kprobe on `__icmp_send` (no trampolines, kprobes built in): the same arguments.
//!
//! skb is the offending packet in every case.
use aya_ebpf::{
    macros::{btf_tracepoint, fentry, kprobe},
    programs::{BtfTracePointContext, FEntryContext, ProbeContext},
};

use crate::skb::on_icmp_send;

#[btf_tracepoint(function = "icmp_send")]
pub fn icmp_send(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    let icmp_type: u64 = ctx.arg(1);
    let icmp_code: u64 = ctx.arg(2);
    on_icmp_send::<true>(skb, icmp_type as u8, icmp_code as u8);
    0
}

#[fentry(function = "__icmp_send")]
pub fn icmp_send_fentry(ctx: FEntryContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    let icmp_type: u64 = ctx.arg(1);
    let icmp_code: u64 = ctx.arg(2);
    on_icmp_send::<true>(skb, icmp_type as u8, icmp_code as u8);
    0
}

#[kprobe]
pub fn icmp_send_kprobe(ctx: ProbeContext) -> u32 {
    let (Some(skb), Some(icmp_type), Some(icmp_code)) =
        (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(2))
    else {
        return 0;
    };
    on_icmp_send::<false>(skb, icmp_type as u8, icmp_code as u8);
    0
}
