//! The change journal `droptrace record` keeps (default /var/lib/droptrace), and what `watch`,
//! `check` and `history` read from it. A line is a JSON object: `"type":"change"` (the
//! change line `watch` prints, with `boot_id` and `netns_name`), or `"type":"recorder"`
//! (the recorder started or stopped, what it covered). The namespaces' last states, which
//! the recorder compares to find changes no hook saw, are in `state.json` beside it.
pub mod fingerprint;
pub mod store;

use std::{
    io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{attribute::Why, observe::changes::ChangeRecord};

/// `{"type":"recorder",…}`: the recorder started or stopped, or lost changes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecorderRecord {
    #[serde(rename = "type")]
    pub kind: String,
    pub time: String,
    /// `start`, `stop`, or `lost` (changes the kernel could not queue; `notes` says how many).
    pub event: String,
    pub boot_id: String,
    pub version: String,
    pub pid: u32,
    /// The namespaces whose rulesets it monitors and fingerprints (sysctl writes and legacy
    /// replacements are recorded in every namespace).
    pub namespaces: Vec<String>,
    /// The hooks that attached.
    pub hooks: Vec<String>,
    pub notes: Vec<String>,
}

/// The running kernel's boot id.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A journal directory to read: `asked` (`--journal DIR`), else the default one when it
/// exists. None when there is none.
pub fn locate(asked: Option<&Path>) -> Option<PathBuf> {
    match asked {
        Some(dir) => Some(dir.to_path_buf()),
        None => {
            let dir = Path::new(store::DEFAULT_DIR);
            dir.is_dir().then(|| dir.to_path_buf())
        }
    }
}

/// One journal line, parsed.
#[derive(Clone, Debug)]
pub enum Entry {
    Change(Box<ChangeRecord>),
    Recorder(RecorderRecord),
}

/// One journal line → its entry (None for a line that is not a record).
pub fn parse(line: &str) -> Option<Entry> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    match v["type"].as_str()? {
        "change" => serde_json::from_value(v)
            .ok()
            .map(|c| Entry::Change(Box::new(c))),
        "recorder" => serde_json::from_value(v).ok().map(Entry::Recorder),
        _ => None,
    }
}

/// Every entry of the journal, oldest first. Lines that are not records (a torn or foreign
/// line) are skipped.
pub fn read_all(dir: &Path) -> io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for (_, path) in store::segments(dir)? {
        match store::read_lines(&path) {
            Ok(lines) => out.extend(lines.iter().filter_map(|l| parse(l))),
            // Pruned between the listing and the read.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// What the journal says about a cause in one namespace, this boot.
#[derive(Clone, Debug, Default)]
pub struct Lookup {
    /// The most recent recorded change that explains it, marked with the journal and its age.
    pub culprit: Option<ChangeRecord>,
    /// When none does: when the recorder first started this boot (None: it did not run).
    pub since: Option<String>,
}

/// The most recent change recorded in `dir` for namespace `netns` in this boot that explains
/// `why`. Segments are read newest first, and the search stops at the first that has one.
pub fn find_culprit(dir: &Path, netns: u32, why: &Why) -> io::Result<Lookup> {
    let boot = boot_id();
    let mut out = Lookup::default();
    for (_, path) in store::segments(dir)?.into_iter().rev() {
        let lines = match store::read_lines(&path) {
            Ok(lines) => lines,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut changes = Vec::new();
        for entry in lines.iter().filter_map(|l| parse(l)) {
            match entry {
                Entry::Change(c) if concerns(&c, netns) && c.boot_id.as_deref() == Some(&boot) => {
                    changes.push(*c)
                }
                Entry::Recorder(r) if r.event == "start" && r.boot_id == boot => {
                    out.since = Some(r.time)
                }
                _ => {}
            }
        }
        if let Some(c) = crate::attribute::culprit::culprit_for(why, &changes) {
            let mut c = c.clone();
            c.journal = Some(dir.display().to_string());
            c.age_s = age_secs(&c.time);
            out.culprit = Some(c);
            return Ok(out);
        }
    }
    Ok(out)
}

/// Whether a recorded change concerns namespace `netns`: made in it, or a host-wide sysctl
/// (written in the initial namespace, one limit for all).
fn concerns(c: &ChangeRecord, netns: u32) -> bool {
    c.netns == netns
        || (c.source == "sysctl"
            && c.key
                .as_deref()
                .is_some_and(crate::observe::changes::host_wide))
}

/// Seconds since an RFC 3339 time.
pub fn age_secs(time: &str) -> Option<u64> {
    let t = chrono::DateTime::parse_from_rfc3339(time).ok()?;
    let age = chrono::Utc::now().signed_duration_since(t);
    u64::try_from(age.num_seconds()).ok()
}

/// `3 h 12 min`, `45 s`, `2 d 4 h`.
pub fn human_age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real recorder's journal (testdata/journal-webapp.sh, which says how it was made): a
    // web app's network restart turns forwarding off, a cleanup flushes Docker's nat chain,
    // the recorder stops, forwarding goes back on, the recorder starts again.
    const JOURNAL: &str = include_str!("testdata/journal-webapp.jsonl");

    #[test]
    fn a_real_journal_parses_and_names_each_causes_culprit() {
        let entries: Vec<Entry> = JOURNAL.lines().filter_map(parse).collect();
        assert_eq!(
            entries.len(),
            JOURNAL.lines().count(),
            "every line is a record"
        );
        let events: Vec<&str> = entries
            .iter()
            .filter_map(|e| match e {
                Entry::Recorder(r) => Some(r.event.as_str()),
                Entry::Change(_) => None,
            })
            .collect();
        assert_eq!(events, ["start", "stop", "start", "stop"]);
        let changes: Vec<ChangeRecord> = entries
            .into_iter()
            .filter_map(|e| match e {
                Entry::Change(c) => Some(*c),
                Entry::Recorder(_) => None,
            })
            .collect();
        let off = Why::ForwardingDisabled {
            sysctl: "net.ipv4.ip_forward".into(),
            still_off: true,
        };
        let c = crate::attribute::culprit::culprit_for(&off, &changes).unwrap();
        assert_eq!(c.what, "net.ipv4.ip_forward 1 -> 0");
        let chain: Vec<&str> = c
            .process
            .ancestors
            .iter()
            .map(|a| a.comm.as_str())
            .collect();
        assert_eq!(chain[..3], ["network-restart", "webapp", "run-webapp"]);
        let missing = Why::MissingChain {
            missing: crate::attribute::rules::Missing::NoDnat,
            died: crate::attribute::Died::NoListener,
        };
        let c = crate::attribute::culprit::culprit_for(&missing, &changes).unwrap();
        assert!(
            c.what.starts_with("delete rule ip nat DOCKER handle "),
            "{}",
            c.what
        );
        assert!(
            c.what
                .contains("(was: iifname != \"docker0\" tcp dport 5000"),
            "{}",
            c.what
        );
        // What changed while the recorder was stopped: found at its next start, no author.
        let back_on = changes
            .iter()
            .find(|c| c.new.as_deref() == Some("1"))
            .unwrap();
        assert_eq!(back_on.process.captured, "unknown");
        assert!(back_on.seen_by.as_deref().unwrap().contains("stopped"));
    }

    #[test]
    fn ages_read_like_a_person_would_say_them() {
        assert_eq!(human_age(45), "45 s");
        assert_eq!(human_age(11_520), "3 h 12 min");
        assert_eq!(human_age(3 * 86_400 + 7200), "3 d 2 h");
        assert!(age_secs("2026-01-01T00:00:00Z").unwrap() > 0);
        assert_eq!(age_secs("yesterday"), None);
    }
}
