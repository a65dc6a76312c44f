//! `nft -j list ruleset` JSON → ruleset, and the queries over it (maps, reachability).
#![no_main]
use libfuzzer_sys::fuzz_target;
use tracer::{
    attribute::rules,
    observe::{
        facts::Hook,
        state::{Snapshot, nft},
    },
};

fuzz_target!(|data: &[u8]| {
    let Ok(rs) = nft::parse(&String::from_utf8_lossy(data)) else {
        return;
    };
    let snap = Snapshot {
        nft: rs,
        ..Snapshot::default()
    };
    for port in [0, 5000, 65535] {
        let _ = snap.dnats_for(port);
        let _ = snap.published_hints(port);
        for hook in [Hook::PreRouting, Hook::LocalIn, Hook::Forward] {
            let _ = snap.blockers(hook, port);
        }
        let _ = rules::untranslated(&snap, port);
        let _ = rules::path_blockers(&snap, port, Some(8080));
    }
});
