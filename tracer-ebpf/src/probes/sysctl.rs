//! Writes to forwarding-relevant sysctls, with their author, before they take effect.
//!
//! cgroup/sysctl, linked (bpf_link, Linux >= 5.7) to the cgroup v2 root so it sees every
//! process; a link coexists with every other program on the cgroup. It always returns 1: the
//! write is never refused. Names are
//! filtered by prefix here (net/ipv4/ip_forward, net/ipv4/conf/, net/ipv6/conf/,
//! net/bridge/bridge-nf-call-); userspace keeps the leaves that matter.
//! Helpers: bpf_sysctl_get_name / get_current_value / get_new_value; checked on 6.18.
use aya_ebpf::{
    helpers::generated::{
        bpf_sysctl_get_current_value, bpf_sysctl_get_name, bpf_sysctl_get_new_value,
    },
    macros::cgroup_sysctl,
    programs::SysctlContext,
};
use tracer_common::change;

use crate::process::{current_netns, emit_change};

const PREFIXES: [&[u8]; 5] = [
    b"net/ipv4/ip_forward",
    b"net/ipv4/conf/",
    b"net/ipv6/conf/",
    b"net/bridge/bridge-nf-call-",
    // nf_conntrack_max, the TCP tracking switches (be_liberal, loose)
    b"net/netfilter/nf_conntrack_",
];

#[inline(always)]
fn starts_with(name: &[u8; 64], prefix: &[u8]) -> bool {
    let mut i = 0;
    while i < prefix.len() && i < name.len() {
        if name[i] != prefix[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cgroup_sysctl]
pub fn sysctl_write(ctx: SysctlContext) -> i32 {
    // SAFETY: the context pointer is the kernel's bpf_sysctl for this call.
    let write = unsafe { (*ctx.sysctl).write };
    if write != 0 {
        record(&ctx);
    }
    1 // allow: droptrace observes, it never refuses a write
}

/// One limit for every namespace, writable only in the initial one: its write is kept
/// whichever namespace is watched (a lab's or a container host's table fills up to it too).
/// NUL-terminated so `nf_conntrack_max_something` would not match.
const HOST_WIDE: &[u8] = b"net/netfilter/nf_conntrack_max\0";

#[inline(always)]
fn record(ctx: &SysctlContext) {
    let (netns, watched) = current_netns();
    let mut name = [0u8; 64];
    // SAFETY: the buffer is 64 bytes and its length is passed; flags 0 = full name.
    let rc = unsafe { bpf_sysctl_get_name(ctx.sysctl, name.as_mut_ptr().cast(), 64, 0) };
    if rc < 0 || !PREFIXES.iter().any(|p| starts_with(&name, p)) {
        return;
    }
    if !watched && !starts_with(&name, HOST_WIDE) {
        return;
    }
    emit_change(change::SYSCTL, netns, name, |ev| {
        // SAFETY: `ev` is the reserved event; the helpers write at most 16 bytes each and
        // NUL-terminate (the buffers were zeroed in case they fail).
        unsafe {
            bpf_sysctl_get_current_value(ctx.sysctl, (*ev).old_value.as_mut_ptr().cast(), 16);
            bpf_sysctl_get_new_value(ctx.sysctl, (*ev).new_value.as_mut_ptr().cast(), 16);
        }
    });
}
