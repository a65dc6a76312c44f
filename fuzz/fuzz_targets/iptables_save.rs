//! `iptables-save -c` text → ruleset, and every query droptrace asks of it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tracer::observe::state::{Snapshot, iptables};

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
        for hook in ["PRE_ROUTING", "LOCAL_IN", "FORWARD", "LOCAL_OUT", "POST_ROUTING"] {
            let _ = snap.blockers(hook, port);
        }
    }
    let _ = tracer::discover::from_rules(&snap);
});
