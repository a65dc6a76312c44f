//! An empty program on the drop hook. droptrace never loads it: `cargo xtask bench` attaches
//! it beside droptrace's programs as the floor of what any tp_btf program costs per run (the
//! kernel's dispatch, measured in the same run).
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

#[btf_tracepoint(function = "kfree_skb")]
pub fn bench_floor(_ctx: BtfTracePointContext) -> i32 {
    0
}
