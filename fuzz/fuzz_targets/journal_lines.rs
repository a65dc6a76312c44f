//! The recorder's journal lines (`droptrace history`, `watch --journal`), and a culprit
//! looked up among them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tracer::journal::{self, Entry};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let changes: Vec<_> = text
        .lines()
        .filter_map(journal::parse)
        .filter_map(|e| match e {
            Entry::Change(c) => Some(*c),
            Entry::Recorder(_) => None,
        })
        .collect();
    for c in &changes {
        let _ = journal::age_secs(&c.time);
        let _ = tracer::report::words::culprit_line(c);
    }
    let why = tracer::attribute::Why::ForwardingDisabled {
        sysctl: "net.ipv4.ip_forward".into(),
        still_off: true,
    };
    let _ = tracer::attribute::culprit::culprit_for(&why, &changes);
});
