//! Where a netfilter drop happened, on kernels without netfilter BPF links (before 6.4) but
//! with BPF trampolines: `nf_hook_slow` runs one hook's chains for one packet.
//!
//!   int nf_hook_slow(struct sk_buff *skb, struct nf_hook_state *state,
//!                    const struct nf_hook_entries *e, unsigned int s)
//!   -- the same four arguments on 5.10, 6.1 and 6.12; `state->hook` is the hook number.
//!
//! fentry records that the packet entered the hook (the trail then holds that hook only: a
//! drop inside nf_hook_slow is in the hook it last entered); fexit adds "left" when every
//! chain accepted it (return 1). A drop (NF_DROP frees the packet inside nf_hook_slow) thus
//! finds "entered, never left" for its hook, and a packet that passed PREROUTING and died in
//! routing finds nothing open: the same trail the netfilter-link probes leave (see
//! tracer/src/load/nfprobe.rs for the bits).
use aya_ebpf::{
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};
use tracer_common::ABSENT;

use crate::{
    maps::{NF_TRAIL, get},
    skb::{field, netns_of},
};

/// The trail bits of netfilter hook `hook` (PRE_ROUTING 0, LOCAL_IN 1, FORWARD 2): entered,
/// left. The later hooks are not traced.
#[inline(always)]
fn bits(hook: u8) -> Option<(u32, u32)> {
    (hook <= 2).then(|| (1u32 << (2 * hook), 1u32 << (2 * hook + 1)))
}

/// The hook `state` describes, for a packet of the watched namespace.
#[inline(always)]
fn watched_hook(skb: u64, state: u64) -> Option<u8> {
    let hook_at = get!(OFFSETS.nf_state_hook);
    if hook_at == ABSENT || skb == 0 || state == 0 {
        return None;
    }
    let dev: u64 = field::<true, u64>(skb, get!(OFFSETS.skb_dev)).unwrap_or(0);
    let watched = get!(CONFIG.netns);
    if watched != 0 && netns_of::<true>(skb, dev) != watched {
        return None;
    }
    field::<true, u8>(state, hook_at).ok()
}

#[fentry(function = "nf_hook_slow")]
pub fn nf_hook_enter(ctx: FEntryContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    let state: u64 = ctx.arg(1);
    if let Some((entered, _)) = watched_hook(skb, state).and_then(bits)
        && let Some(slot) = NF_TRAIL.get_ptr_mut(0)
    {
        // SAFETY: this CPU's slot; programs on one CPU do not interleave inside it.
        unsafe {
            (*slot).skb = skb;
            (*slot).bits = entered;
        }
    }
    0
}

#[fexit(function = "nf_hook_slow")]
pub fn nf_hook_exit(ctx: FExitContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    let state: u64 = ctx.arg(1);
    let verdict: i32 = ctx.arg(4);
    if verdict != 1 {
        return 0;
    }
    if let Some((_, left)) = watched_hook(skb, state).and_then(bits)
        && let Some(slot) = NF_TRAIL.get_ptr_mut(0)
    {
        // SAFETY: as in nf_hook_enter.
        unsafe {
            if (*slot).skb == skb {
                (*slot).bits |= left;
            }
        }
    }
    0
}
