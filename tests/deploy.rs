//! What a fleet deploys: the DaemonSet, valid against the Kubernetes schema.
mod common;

use std::process::Command;

const DAEMONSET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/daemonset.yaml");

/// kubernetes-validate (PyPI; scripts/setup.sh installs it) on one manifest: (passed, output).
fn kubernetes_validate(path: &std::path::Path) -> (bool, String) {
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .arg(path)
        .output()
        .expect("kubernetes-validate (scripts/setup.sh installs it from PyPI)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_daemonset_is_valid_against_the_kubernetes_schema() {
    let (ok, text) = kubernetes_validate(DAEMONSET.as_ref());
    assert!(
        ok && text.contains("passed for resource daemonset/droptrace"),
        "{text}"
    );

    // The validator does check: the same manifest with a field of the wrong type fails.
    let manifest = std::fs::read_to_string(DAEMONSET).unwrap();
    assert!(manifest.contains("hostNetwork: true"));
    let bad = std::env::temp_dir().join(format!("droptrace-bad-{}.yaml", std::process::id()));
    std::fs::write(
        &bad,
        manifest.replace("hostNetwork: true", "hostNetwork: \"yes\""),
    )
    .unwrap();
    let (ok, text) = kubernetes_validate(&bad);
    let _ = std::fs::remove_file(&bad);
    assert!(!ok && text.contains("hostNetwork"), "{text}");
}
