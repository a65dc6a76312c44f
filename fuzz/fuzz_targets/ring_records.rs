//! Ring-buffer records as userspace decodes them (packet headers parsed in the kernel, names
//! resolved here): any bytes must decode or be refused, and render without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tracer::{
    load::kernel::btf::DropReasons,
    observe::event::{self, Clock},
};

fuzz_target!(|data: &[u8]| {
    if let Some(ev) = event::decode(data) {
        let reasons = DropReasons::from_pairs([(2, "SKB_DROP_REASON_NOT_SPECIFIED")]);
        let _ = reasons.name(ev.reason);
        let _ = event::proto_name(ev.proto);
        let _ = event::tcp_flags(ev.tcp_flags);
        let _ = tracer::observe::facts::icmp_name(false, ev.icmp_type, ev.icmp_code);
        let _ = event::rfc3339(Clock::now().wall(ev.ktime_ns));
        let _ = tracer::load::nfprobe::trail_hook(ev.nf_trail);
    }
    if let Some(ch) = event::decode_change(data) {
        let _ = tracer::observe::changes::argv_line(&ch.process.args);
    }
});
