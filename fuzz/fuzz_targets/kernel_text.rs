//! Text the kernel hands droptrace: /proc/kallsyms and tracepoint `format` files.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tracer::load::kernel::{kallsyms::Symbols, tracefs};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let syms = Symbols::parse(&text);
    for addr in [0, 1, 0xffff_ffff_8100_0000, u64::MAX] {
        let _ = syms.resolve(addr);
        let _ = syms.function(addr);
    }
    let _ = tracefs::field_offsets(&text, &["skbaddr", "location", "reason"]);
});
