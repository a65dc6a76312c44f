//! Docker Engine API `/containers/json` body → published ports.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ports) = tracer::discover::published_from_json(&String::from_utf8_lossy(data)) {
        let _ = tracer::discover::select_container(ports, "web");
    }
});
