//! droptrace's kernel side. Each module under `probes/` is one hook; `skb` holds what they
//! share: reading the packet out of an `sk_buff`, the watch filter and the exact counters.
#![no_std]
#![no_main]
// One BPF instruction (an atomic add) has no stable spelling on this target: see maps::bump.
#![feature(asm_experimental_arch)]

mod maps;
mod probes;
mod process;
mod skb;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this, so it is never executed.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
