//! iptables-legacy rewrites a whole table with setsockopt(IPT_SO_SET_REPLACE) (and
//! IP6T_SO_SET_REPLACE): the moment and author of every legacy ruleset change.
//!
//! cgroup/setsockopt, linked (bpf_link, Linux >= 5.7) to the cgroup v2 root, beside any other
//! program there.
//! It sees every setsockopt on the host, so it does the least possible: it always returns 1
//! (allow) and sets optlen to 0 ("use the caller's buffer unchanged") when the option is larger
//! than the page the kernel copied for it, as the sockopt hook contract requires.
use aya_ebpf::{macros::cgroup_sockopt, programs::SockoptContext};
use tracer_common::change;

use crate::process::{emit_change, watched_netns};

const SOL_IP: i32 = 0;
const SOL_IPV6: i32 = 41;
/// IPT_SO_SET_REPLACE == IP6T_SO_SET_REPLACE == 64 (uapi x_tables).
const SO_SET_REPLACE: i32 = 64;
const PAGE_SIZE: i32 = 4096;

#[cgroup_sockopt(setsockopt)]
pub fn ipt_replace(ctx: SockoptContext) -> i32 {
    // SAFETY: the context pointer is the kernel's bpf_sockopt for this call.
    let sockopt = unsafe { &mut *ctx.sockopt };
    let (level, optname) = (sockopt.level, sockopt.optname);
    if (level == SOL_IP || level == SOL_IPV6) && optname == SO_SET_REPLACE {
        // SAFETY: optval/optval_end bound the kernel's copy of the option.
        let (optval, end) = unsafe {
            (
                sockopt.__bindgen_anon_2.optval as *const u8,
                sockopt.__bindgen_anon_3.optval_end as *const u8,
            )
        };
        record(level, optval, end);
    }
    if sockopt.optlen > PAGE_SIZE {
        sockopt.optlen = 0;
    }
    1
}

#[inline(always)]
fn record(level: i32, optval: *const u8, end: *const u8) {
    let Some(netns) = watched_netns() else {
        return;
    };
    let mut name = [0u8; 64];
    // SAFETY: `optval` is read only after the bounds check against `end` (struct
    // ipt_replace starts with char name[32]).
    unsafe {
        if optval.add(32) <= end {
            let table = *(optval as *const [u8; 32]);
            name[..32].copy_from_slice(&table);
        }
    }
    emit_change(change::IPT_REPLACE, netns, name, |ev| {
        let family = if level == SOL_IPV6 {
            *b"ipv6\0\0\0\0\0\0\0\0\0\0\0\0"
        } else {
            *b"ipv4\0\0\0\0\0\0\0\0\0\0\0\0"
        };
        // SAFETY: `ev` is the reserved event.
        unsafe { (*ev).new_value = family };
    });
}
