//! The command line as a shell and `man` see it: completion scripts and man pages generated
//! from the CLI's own definition, exercised by the real bash and man.
mod common;

use std::process::Command;

/// What bash's completion offers after `words` (the last one being completed), with the
/// script `droptrace completions bash` prints sourced.
fn bash_completes(script: &std::path::Path, words: &[&str]) -> Vec<String> {
    let out = Command::new("bash")
        .arg("-c")
        .arg(
            r#"source "$0"; complete -p droptrace >/dev/null || exit 3
COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
_droptrace droptrace "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}""#,
        )
        .arg(script)
        .args(words)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "completion failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn droptrace(args: &[&str]) -> std::process::Output {
    Command::new(&*common::DROPTRACE)
        .args(args)
        .output()
        .expect("droptrace")
}

#[test]
fn bash_completion_offers_the_subcommands_and_the_watch_flags() {
    let out = droptrace(&["completions", "bash"]);
    assert!(out.status.success());
    let dir = tempdir("completion");
    let script = dir.join("droptrace.bash");
    std::fs::write(&script, &out.stdout).unwrap();

    assert_eq!(bash_completes(&script, &["droptrace", "w"]), vec!["watch"]);
    let subcommands = bash_completes(&script, &["droptrace", ""]);
    for sub in [
        "watch",
        "check",
        "ports",
        "demo",
        "report",
        "completions",
        "manpages",
    ] {
        assert!(
            subcommands.iter().any(|s| s == sub),
            "{sub} in {subcommands:?}"
        );
    }
    let flags = bash_completes(&script, &["droptrace", "watch", "--"]);
    for flag in [
        "--port",
        "--addr",
        "--netns",
        "--json",
        "--every-drop",
        "--evidence",
        "--pcap",
        "--metrics",
        "--trace-rules",
        "--duration",
    ] {
        assert!(flags.iter().any(|f| f == flag), "{flag} in {flags:?}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn zsh_and_fish_scripts_name_the_subcommands_and_flags() {
    for shell in ["zsh", "fish"] {
        let out = droptrace(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        for word in ["watch", "check", "every-drop", "netns"] {
            assert!(text.contains(word), "{shell} script lacks {word}");
        }
    }
    let out = droptrace(&["completions", "tcsh"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("bash"));
}

#[test]
fn man_pages_render_with_every_subcommand_and_flag() {
    let dir = tempdir("man");
    let out = droptrace(&["manpages", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    let render = |page: &str| -> String {
        let path = dir.join(page);
        assert!(
            listed.contains(path.to_str().unwrap()),
            "{page} not listed: {listed}"
        );
        let out = Command::new("man")
            .arg("-l")
            .arg(&path)
            .env("MANWIDTH", "200")
            .env("MANPAGER", "cat")
            .output()
            .expect("man (apt-get install man-db)");
        assert!(out.status.success(), "man -l {page}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let main = render("droptrace.1");
    for sub in ["watch", "check", "ports", "demo", "report"] {
        let page = format!("droptrace-{sub}(1)");
        assert!(
            main.contains(&page),
            "droptrace(1) does not point to {page}"
        );
    }
    let watch = render("droptrace-watch.1");
    for flag in [
        "--port",
        "--netns",
        "--every-drop",
        "--evidence",
        "--metrics",
    ] {
        assert!(
            watch.contains(flag),
            "{flag} missing from droptrace-watch(1)"
        );
    }
    assert!(watch.contains("storm"), "the --every-drop text is there");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn man_pages_into_an_unwritable_place_are_one_sentence() {
    let out = droptrace(&["manpages", "/proc/droptrace-man"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("droptrace: cannot write /proc/droptrace-man")
            && err.contains("choose a directory"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

fn tempdir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("droptrace-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
