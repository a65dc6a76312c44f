//! `nft --stateless --handle list ruleset` and `iptables-legacy-save` as the recorder's
//! fingerprint reads them, and the differences between two of them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tracer::journal::fingerprint::{NsState, differences, legacy_entries, nft_entries};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mid = text
        .char_indices()
        .nth(text.chars().count() / 2)
        .map_or(text.len(), |(i, _)| i);
    let (half_a, half_b) = text.split_at(mid);
    let state = |t: &str| {
        let (nft, handles) = nft_entries(t);
        NsState {
            nft,
            handles,
            legacy: legacy_entries("ip", t),
            ..NsState::default()
        }
    };
    let (a, b) = (state(half_a), state(half_b));
    let _ = differences(&a, &b);
    for line in text.lines() {
        let _ = a.describe(line);
    }
});
