//! `droptrace record` in the tests: its journal in a directory of the test's own, the recorder
//! started and stopped as a service would be, its records read back.
use std::{
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::DROPTRACE;

/// A directory of the test's own, removed (unmounted first, if the test mounted a tmpfs
/// there) on drop.
pub struct TempDir(pub PathBuf, bool);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("dt-rec-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir, false)
    }

    /// A tmpfs with these mount options, on the directory.
    pub fn tmpfs(name: &str, options: &str) -> TempDir {
        let mut dir = TempDir::new(name);
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs", dir.path()])
            .status()
            .unwrap();
        assert!(status.success(), "mount a tmpfs on {}", dir.path());
        dir.1 = true;
        dir
    }

    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.1 {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An executable script named `name` in `dir` (its process's comm is the name).
pub fn script(dir: &TempDir, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_string()
}

/// A running `droptrace record`, killed on drop; its stderr collected as it comes.
pub struct Recorder {
    child: Option<Child>,
    journal: PathBuf,
    stderr: Arc<Mutex<String>>,
}

impl Recorder {
    /// Starts `droptrace record --journal DIR ARGS…` and waits (bounded) for its start record.
    pub fn start(journal: &Path, args: &[&str]) -> Recorder {
        let mut child = Command::new(&*DROPTRACE)
            .arg("record")
            .arg("--journal")
            .arg(journal)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn droptrace record");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut rec = Recorder {
            child: Some(child),
            journal: journal.to_path_buf(),
            stderr,
        };
        let starts = entries(journal)
            .iter()
            .filter(|e| e["type"] == "recorder" && e["event"] == "start")
            .count();
        rec.wait("its start record", |all| {
            all.iter()
                .filter(|e| e["type"] == "recorder" && e["event"] == "start")
                .count()
                > starts
        });
        rec
    }

    /// Waits (up to 20 s) until the journal satisfies `done`; its entries then.
    pub fn wait(&mut self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let all = entries(&self.journal);
            if done(&all) {
                return all;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                panic!(
                    "the journal never showed {what} (recorder exit: {exited:?}); stderr:\n{}\njournal:\n{all:#?}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The first change in the journal that `pick` accepts, once there is one.
    pub fn change(&mut self, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
        let all = self.wait(what, |all| {
            all.iter().any(|e| e["type"] == "change" && pick(e))
        });
        all.into_iter()
            .find(|e| e["type"] == "change" && pick(e))
            .unwrap()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The hooks its last start record says attached.
    pub fn hooks(&self) -> Vec<String> {
        entries(&self.journal)
            .iter()
            .rev()
            .find(|e| e["type"] == "recorder" && e["event"] == "start")
            .and_then(|e| e["hooks"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|h| h.as_str().map(str::to_string))
            .collect()
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// SIGTERM, then its exit status (bounded wait).
    pub fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the recorder did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every record of the journal in `dir`, oldest first. Each whole line must be JSON; a last
/// line still being written (no newline yet) is not read.
pub fn entries(dir: &Path) -> Vec<Value> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.to_str().is_some_and(|s| s.ends_with(".jsonl")))
                .collect()
        })
        .unwrap_or_default();
    segs.sort();
    let mut out = Vec::new();
    for p in segs {
        let text = std::fs::read_to_string(p).unwrap_or_default();
        for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            let v =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("torn record ({e}): {line}"));
            out.push(v);
        }
    }
    out
}

/// Waits (up to 40 s) until the journal in `dir` satisfies `done`; its records then.
pub fn journal_until(dir: &Path, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let all = entries(dir);
        if done(&all) {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} in the journal: {all:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn comms(process: &Value) -> Vec<String> {
    std::iter::once(process)
        .chain(process["ancestors"].as_array().into_iter().flatten())
        .filter_map(|p| p["comm"].as_str().map(str::to_string))
        .collect()
}
