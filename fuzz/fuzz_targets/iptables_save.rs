//! `iptables-save -c` text → ruleset, and every query droptrace asks of it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tracer::{
    attribute::rules,
    observe::{
        facts::Hook,
        state::{Snapshot, iptables},
    },
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let rs = iptables::parse("iptables-nft", &text);
    let snap = Snapshot {
        iptables: vec![rs],
        ..Snapshot::default()
    };
    for port in [0, 22, 5000, 65535] {
        let _ = snap.dnats_for(port);
        let _ = snap.published_hints(port);
        for hook in [
            Hook::PreRouting,
            Hook::LocalIn,
            Hook::Forward,
            Hook::LocalOut,
            Hook::PostRouting,
            Hook::Routing,
            Hook::Socket,
        ] {
            let _ = snap.blockers(hook, port);
        }
        let _ = rules::untranslated(&snap, port);
        let _ = rules::path_blockers(&snap, port, Some(8080));
        let _ = rules::path_blockers(&snap, port, None);
    }
    let _ = tracer::discover::from_rules(&snap);
});
