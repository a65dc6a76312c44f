//! `droptrace history`: the recorder's journal, filtered, in human form or JSON Lines.
use std::{io::Write, path::PathBuf};

use chrono::{DateTime, Utc};

use crate::{
    discover::netns::Netns,
    error::Error,
    journal::{self, Entry},
    observe::changes::ChangeRecord,
};

/// What `history` was asked for.
#[derive(Clone, Debug, Default)]
pub struct HistoryRequest {
    pub journal: PathBuf,
    /// A name (`host`, an `ip netns` name), an inode, or a path such as /proc/PID/ns/net.
    pub netns: Option<String>,
    /// A sysctl or legacy table (`net.ipv4.ip_forward`, `nat`), or words of the change.
    pub key: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// The author's systemd unit (`network.service`), or part of it.
    pub unit: Option<String>,
    pub json: bool,
}

/// `--since`/`--until`: RFC 3339 (`2026-11-26T13:00:00Z`), or an age (`90s`, `45m`, `3h`,
/// `2d`) before now.
pub fn parse_when(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| format!("{s:?} is neither a time (2026-11-26T13:00:00Z) nor an age (3h)"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" | "min" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{s:?}: an age's unit is s, m, h or d (e.g. 3h)")),
    };
    Ok(Utc::now() - chrono::Duration::seconds(secs))
}

fn time_of(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Which namespace `--netns` means: its inode when it names one that exists now.
fn netns_inode(spec: &str) -> Option<u32> {
    if let Ok(n) = spec.parse::<u32>() {
        return Some(n);
    }
    Netns::resolve(spec).ok().map(|n| n.inode)
}

struct Filter {
    netns: Option<(String, Option<u32>)>,
    req: HistoryRequest,
}

impl Filter {
    fn in_time(&self, time: &str) -> bool {
        let t = time_of(time);
        self.req.since.is_none_or(|s| t.is_some_and(|t| t >= s))
            && self.req.until.is_none_or(|u| t.is_some_and(|t| t <= u))
    }

    fn keeps(&self, c: &ChangeRecord) -> bool {
        let netns = self.netns.as_ref().is_none_or(|(name, inode)| {
            c.netns_name.as_deref() == Some(name) || *inode == Some(c.netns)
        });
        let key = self
            .req
            .key
            .as_ref()
            .is_none_or(|k| c.key.as_deref() == Some(k) || c.what.contains(k.as_str()));
        let unit = self.req.unit.as_ref().is_none_or(|u| {
            c.process
                .unit
                .as_deref()
                .is_some_and(|x| x.contains(u.as_str()))
        });
        netns && key && unit && self.in_time(&c.time)
    }
}

/// `2026-11-26 13:02:11 UTC`, from RFC 3339.
fn short_time(t: &str) -> String {
    time_of(t).map_or_else(
        || t.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

fn human(entry: &Entry, boot: &str) -> String {
    match entry {
        Entry::Change(c) => {
            let earlier = if c.boot_id.as_deref().is_some_and(|b| b != boot) {
                " (an earlier boot)"
            } else {
                ""
            };
            let ns = c.netns_name.clone().unwrap_or_else(|| c.netns.to_string());
            let mut line = format!(
                "{}  {ns:<12} {:<15} {}  by {}{earlier}",
                short_time(&c.time),
                c.source,
                c.what,
                c.process.chain()
            );
            if let Some(how) = &c.seen_by {
                line.push_str(&format!(" [{how}]"));
            }
            line
        }
        Entry::Recorder(r) => format!(
            "{}  recorder {} (pid {}, version {}; hooks: {}; namespaces: {})",
            short_time(&r.time),
            if r.event == "start" {
                "started"
            } else {
                "stopped"
            },
            r.pid,
            r.version,
            r.hooks.join(" "),
            r.namespaces.join(", ")
        ),
    }
}

/// `droptrace history`.
pub fn run<W: Write>(req: HistoryRequest, mut out: W) -> Result<(), Error> {
    let entries = journal::read_all(&req.journal).map_err(|e| Error::NoJournal {
        path: req.journal.display().to_string(),
        why: e.to_string(),
    })?;
    let filter = Filter {
        netns: req.netns.as_ref().map(|s| (s.clone(), netns_inode(s))),
        req: req.clone(),
    };
    let narrowed = req.netns.is_some() || req.key.is_some() || req.unit.is_some();
    let boot = journal::boot_id();
    let io = |e: std::io::Error| Error::Io(format!("writing output: {e}"));
    let mut shown = 0;
    for entry in &entries {
        let keep = match entry {
            Entry::Change(c) => filter.keeps(c),
            // The recorder's starts and stops say what was covered when: shown unless the
            // question is about one namespace, key or unit.
            Entry::Recorder(r) => !narrowed && filter.in_time(&r.time),
        };
        if !keep {
            continue;
        }
        shown += 1;
        if req.json {
            let line = match entry {
                Entry::Change(c) => serde_json::to_string(c),
                Entry::Recorder(r) => serde_json::to_string(r),
            };
            writeln!(out, "{}", line.map_err(|e| Error::Io(e.to_string()))?).map_err(io)?;
        } else {
            writeln!(out, "{}", human(entry, &boot)).map_err(io)?;
        }
    }
    if shown == 0 && !req.json {
        writeln!(
            out,
            "no record in {} matches ({} record(s) in all)",
            req.journal.display(),
            entries.len()
        )
        .map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_ages() {
        let t = parse_when("2026-11-26T13:00:00Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-26T13:00:00+00:00");
        let three_h = parse_when("3h").unwrap();
        let age = Utc::now() - three_h;
        assert!((age.num_seconds() - 10_800).abs() < 5);
        assert!(parse_when("3 weeks").is_err());
        assert!(parse_when("soon").is_err());
    }
}
