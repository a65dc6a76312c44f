//! The drop path: every `kfree_skb_reason()` in the kernel.
//!
//! tp_btf (preferred; kernel >= 5.5 with BTF). Userspace loads the program written for the
//! running kernel's prototype:
//!   since 5.17: TP_PROTO(struct sk_buff *skb, void *location, enum skb_drop_reason reason,
//!               struct sock *rx_sk)         -- rx_sk added in 6.12; unused here
//!               checked on 6.1, 6.12, 6.18.
//!   before:     TP_PROTO(struct sk_buff *skb, void *location)   -- checked on 5.10
//!               (REASON_UNREPORTED: userspace infers the cause from the location).
//! tracepoint skb/kfree_skb (fallback when tp_btf cannot load): the record's field offsets
//!   (skbaddr, location, and reason where the format has one) come from tracefs
//!   `events/skb/kfree_skb/format`.
use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};

use tracer_common::{NO_FIELD, REASON_UNREPORTED, stat};

use crate::{
    maps::{bump, get},
    skb::on_drop,
};

#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb_btf(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    let reason: u64 = ctx.arg(2);
    on_drop::<true>(skb, location, reason as u32);
    0
}

#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb_btf_no_reason(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    on_drop::<true>(skb, location, REASON_UNREPORTED);
    0
}

#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn kfree_skb_tp(ctx: TracePointContext) -> u32 {
    let (skb_at, location_at, reason_at) = (
        get!(OFFSETS.tp_skbaddr),
        get!(OFFSETS.tp_location),
        get!(OFFSETS.tp_reason),
    );
    // SAFETY: the offsets come from this tracepoint's own format file and lie inside the
    // record; read_at goes through bpf_probe_read_kernel, which cannot fault.
    let (skb, location, reason) = unsafe {
        (
            ctx.read_at::<u64>(skb_at as usize),
            ctx.read_at::<u64>(location_at as usize),
            if reason_at == NO_FIELD {
                Ok(REASON_UNREPORTED)
            } else {
                ctx.read_at::<u32>(reason_at as usize)
            },
        )
    };
    match (skb, location, reason) {
        (Ok(skb), Ok(location), Ok(reason)) => on_drop::<false>(skb, location, reason),
        // A record the program cannot read is a drop it cannot report: counted, not hidden.
        _ => {
            bump(stat::READ_ERRORS);
            aya_log_ebpf::warn!(&(), "unreadable skb:kfree_skb record: its format changed?");
        }
    }
    0
}
