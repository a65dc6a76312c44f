//! The journal on disk: a directory (0700) of numbered segments (`changes-00000001.jsonl`,
//! 0600), one JSON record a line, appended to the newest.
//!
//! - **Atomic records.** A record is one `write(2)` of a whole line to an O_APPEND file; a
//!   batch of them is then made durable with one `fdatasync`. A write that fails part way (a full disk) is cut back to the last
//!   whole record. A crash can still leave a partial last line: readers skip lines that do
//!   not end in a newline, and the writer cuts such a tail off when it opens the segment.
//! - **Bounded.** A segment is closed at `Limits::segment_bytes`; the oldest closed segments
//!   are deleted while the journal is over `max_bytes`, or while their last record is older
//!   than `max_age`. The segment being written is never deleted.
use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

/// Default place of the journal (systemd's StateDirectory=droptrace).
pub const DEFAULT_DIR: &str = "/var/lib/droptrace";

const PREFIX: &str = "changes-";
const SUFFIX: &str = ".jsonl";

/// How big and how old the journal may grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_age: Duration,
    pub segment_bytes: u64,
}

impl Limits {
    /// `max_bytes` in all, kept for `max_age`, in segments of an eighth of the size (at least
    /// 4 KiB, so a record always fits one).
    pub fn new(max_bytes: u64, max_age: Duration) -> Self {
        Self {
            max_bytes,
            max_age,
            segment_bytes: (max_bytes / 8).max(4096),
        }
    }
}

impl Default for Limits {
    /// 64 MiB for 90 days: a busy host's changes (a few hundred a day, ≈1 KiB each) for the
    /// whole period.
    fn default() -> Self {
        Self::new(64 << 20, Duration::from_secs(90 * 86_400))
    }
}

/// The segments of `dir`, oldest first: (sequence number, path).
pub fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((seq, entry.path()));
    }
    out.sort();
    Ok(out)
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{seq:08}{SUFFIX}"))
}

/// The whole lines of a segment (a torn last line is left out), oldest first.
pub fn read_lines(path: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut reader = BufReader::new(File::open(path)?);
    let mut line = String::new();
    loop {
        line.clear();
        let n = match reader.read_line(&mut line) {
            Ok(n) => n,
            // Bytes that are not UTF-8 cannot be a record droptrace wrote: skip the line.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let mut skip = Vec::new();
                reader.read_until(b'\n', &mut skip)?;
                continue;
            }
            Err(e) => return Err(e),
        };
        if n == 0 || !line.ends_with('\n') {
            break;
        }
        out.push(line.trim_end().to_string());
    }
    Ok(out)
}

/// Appends records to the newest segment, rotating and pruning within `limits`.
pub struct Writer {
    dir: PathBuf,
    limits: Limits,
    seq: u64,
    file: File,
    len: u64,
    /// `DIR/.lock`, held (flock) while this writer lives: one recorder per journal.
    _lock: File,
}

impl Writer {
    /// Opens (creating it 0700 if needed) the journal in `dir` and its newest segment, cutting
    /// off a torn last record. Fails when the directory cannot be written.
    pub fn open(dir: &Path, limits: Limits) -> io::Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        let lock = lock(dir)?;
        let seq = segments(dir)?.last().map_or(1, |(seq, _)| *seq);
        let (file, len) = open_segment(&segment_path(dir, seq))?;
        let mut w = Self {
            dir: dir.to_path_buf(),
            limits,
            seq,
            file,
            len,
            _lock: lock,
        };
        if w.len >= limits.segment_bytes {
            w.rotate()?;
        }
        w.prune()?;
        Ok(w)
    }

    /// Writes one record (a JSON line without its newline) and syncs it to disk.
    pub fn append(&mut self, record: &str) -> io::Result<()> {
        self.write(record)?;
        self.sync()
    }

    /// Writes one record in one `write(2)`, not yet synced (`sync` makes a batch durable).
    /// On failure the segment is cut back to its last whole record, and the error says so.
    pub fn write(&mut self, record: &str) -> io::Result<()> {
        if self.len > 0 && self.len + record.len() as u64 + 1 > self.limits.segment_bytes {
            self.rotate()?;
        }
        let mut line = Vec::with_capacity(record.len() + 1);
        line.extend_from_slice(record.as_bytes());
        line.push(b'\n');
        if let Err(e) = self.file.write_all(&line) {
            // A short write leaves part of a line: take it back so the segment ends on a
            // whole record (readers would skip it anyway, but the next record must not be
            // glued to it).
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += line.len() as u64;
        Ok(())
    }

    /// Makes what was written durable (`fdatasync`).
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Closes the current segment and starts the next, then prunes.
    fn rotate(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        let next = segment_path(&self.dir, self.seq + 1);
        let (file, len) = open_segment(&next)?;
        self.seq += 1;
        self.file = file;
        self.len = len;
        self.prune()
    }

    /// Deletes the oldest closed segments while the journal is too big or they are too old.
    pub fn prune(&mut self) -> io::Result<()> {
        let segs = segments(&self.dir)?;
        let mut sized: Vec<(u64, PathBuf, u64, SystemTime)> = segs
            .into_iter()
            .filter_map(|(seq, path)| {
                let meta = fs::metadata(&path).ok()?;
                Some((seq, path, meta.len(), meta.modified().ok()?))
            })
            .collect();
        let mut total: u64 = sized.iter().map(|s| s.2).sum();
        let now = SystemTime::now();
        sized.retain(|s| s.0 != self.seq);
        for (_, path, len, modified) in sized {
            let old = now
                .duration_since(modified)
                .is_ok_and(|age| age > self.limits.max_age);
            if total <= self.limits.max_bytes && !old {
                break;
            }
            fs::remove_file(&path)?;
            total -= len;
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Takes the journal's lock, or says that another recorder holds it.
fn lock(dir: &Path) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(dir.join(".lock"))?;
    // SAFETY: flock on a descriptor this function owns; released when the file closes.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "another droptrace record is writing this journal: stop it first, or pass --journal with another directory",
            ));
        }
        return Err(e);
    }
    Ok(file)
}

/// Opens a segment for appending (0600), cutting off a torn last line; with its length.
fn open_segment(path: &Path) -> io::Result<(File, u64)> {
    let file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    let len = file.metadata()?.len();
    let whole = whole_length(path, len)?;
    if whole != len {
        file.set_len(whole)?;
    }
    Ok((file, whole))
}

/// The length of the segment up to and including its last newline.
fn whole_length(path: &Path, len: u64) -> io::Result<u64> {
    if len == 0 {
        return Ok(0);
    }
    let bytes = fs::read(path)?;
    Ok(bytes
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i as u64 + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("droptrace-journal-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn records_survive_reopening_and_a_torn_tail_is_cut_off() {
        let dir = tempdir("torn");
        let mut w = Writer::open(&dir, Limits::default()).unwrap();
        w.append(r#"{"n":1}"#).unwrap();
        w.append(r#"{"n":2}"#).unwrap();
        drop(w);
        let seg = segments(&dir).unwrap()[0].1.clone();
        // A crash in the middle of a record.
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(br#"{"n":3,"trunc"#).unwrap();
        drop(f);
        assert_eq!(read_lines(&seg).unwrap(), [r#"{"n":1}"#, r#"{"n":2}"#]);
        let mut w = Writer::open(&dir, Limits::default()).unwrap();
        w.append(r#"{"n":4}"#).unwrap();
        assert_eq!(
            read_lines(&seg).unwrap(),
            [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":4}"#]
        );
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let mode = fs::metadata(&seg).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn segments_older_than_the_age_bound_go_but_never_the_current_one() {
        let dir = tempdir("age");
        fs::create_dir_all(&dir).unwrap();
        let old = SystemTime::now() - Duration::from_secs(7200);
        for seq in 1..=3 {
            let f = File::create(segment_path(&dir, seq)).unwrap();
            writeln!(&f, r#"{{"n":{seq}}}"#).unwrap();
            f.set_modified(old).unwrap();
        }
        let limits = Limits::new(1 << 20, Duration::from_secs(3600));
        let mut w = Writer::open(&dir, limits).unwrap();
        let left: Vec<u64> = segments(&dir).unwrap().iter().map(|s| s.0).collect();
        assert_eq!(
            left,
            [3],
            "the old closed segments went, the one written to stays"
        );
        w.append(r#"{"n":4}"#).unwrap();
        assert_eq!(read_lines(&segment_path(&dir, 3)).unwrap().len(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_writer_per_journal() {
        let dir = tempdir("lock");
        let first = Writer::open(&dir, Limits::default()).unwrap();
        let Err(e) = Writer::open(&dir, Limits::default()) else {
            panic!("a second writer opened the journal");
        };
        assert!(e.to_string().contains("another droptrace record"), "{e}");
        drop(first);
        assert!(Writer::open(&dir, Limits::default()).is_ok());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rotation_keeps_the_newest_records_within_the_bound() {
        let dir = tempdir("rotate");
        let limits = Limits::new(32 * 1024, Duration::from_secs(3600));
        let mut w = Writer::open(&dir, limits).unwrap();
        let pad = "x".repeat(200);
        for n in 0..1000 {
            w.append(&format!(r#"{{"n":{n},"pad":"{pad}"}}"#)).unwrap();
        }
        let segs = segments(&dir).unwrap();
        let total: u64 = segs
            .iter()
            .map(|(_, p)| fs::metadata(p).unwrap().len())
            .sum();
        assert!(total <= limits.max_bytes + limits.segment_bytes, "{total}");
        assert!(
            segs.len() > 2 && segs[0].0 > 1,
            "old segments were deleted: {segs:?}"
        );
        let last = read_lines(&segs.last().unwrap().1).unwrap();
        assert!(last.last().unwrap().starts_with(r#"{"n":999,"#));
        fs::remove_dir_all(&dir).unwrap();
    }
}
