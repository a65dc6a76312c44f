//! `nft monitor` and `nft monitor trace` output lines.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tracer::observe::changes::MonitorParser;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut monitor = MonitorParser::default();
    for line in text.lines() {
        let _ = monitor.line(line);
    }
    tracer::observe::tracerules::parse_lines(&text);
});
