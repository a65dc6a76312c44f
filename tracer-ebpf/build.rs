use which::which;

/// Linking this crate needs the `bpf-linker` binary, which cargo cannot express as a dependency:
/// rebuild when the linker on PATH changes so a new linker is never silently ignored.
fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo::rerun-if-changed={}", path.display()),
        Err(err) => println!(
            "cargo::warning=bpf-linker not found on PATH ({err}): run scripts/setup.sh to install it"
        ),
    }
}
