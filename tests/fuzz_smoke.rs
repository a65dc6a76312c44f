//! A short run of every parser's fuzz target (fuzz/run-all.sh): bad input from the system
//! must never crash droptrace. Its own test binary, so it runs alone (cargo runs test
//! binaries one after another) and does not slow the timing-sensitive lab tests.
#[test]
fn every_parser_survives_a_fuzz_smoke_run() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/run-all.sh");
    let has_fuzz = std::process::Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        has_fuzz,
        "cargo-fuzz is not installed: scripts/test.sh installs it"
    );
    let out = std::process::Command::new("bash")
        .args([script, "5"])
        .output()
        .expect("run fuzz/run-all.sh");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "a fuzz target failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every target fuzz/Cargo.toml declares ran.
    let manifest = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/Cargo.toml"));
    let targets = manifest.matches("[[bin]]").count();
    assert!(targets >= 8, "{manifest}");
    assert_eq!(text.matches("no crash").count(), targets, "{text}");
}
