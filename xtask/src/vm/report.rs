//! The matrix's verdicts: each step of each guest judged from its exit status and output,
//! a table for people, `target/vm/results.json` for tools, and the run's own exit status.
use std::path::Path;

use anyhow::{Result, bail};
use serde::Serialize;

use super::{
    apt::KernelPackage,
    guest::{Accel, GuestRun, StepRun},
};

/// How long a refusal may take to count as "fast": the issue asks for about a second; the
/// guest runs under emulation, several times slower than a host.
const FAST_REFUSAL_SECS: f64 = 5.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    /// droptrace refused the kernel: exit 3 with its sentence, fast.
    Refused,
    Fail,
    Hang,
    Skipped,
    /// The guest ended before the step reported (crash, power loss, host deadline).
    NoResult,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepResult {
    pub name: String,
    pub status: Status,
    pub rc: Option<i32>,
    pub secs: Option<f64>,
    /// Tests: passed / failed counts and the names of failed tests.
    pub passed: Option<u32>,
    pub failed: Option<u32>,
    pub failures: Vec<String>,
    /// droptrace's own error sentence, when it printed one.
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct KernelResult {
    pub package: String,
    pub version: String,
    pub series: String,
    pub release: String,
    pub distribution: &'static str,
    /// The suite whose userland the guest ran (bookworm's tools for the kernel matrix).
    pub suite: String,
    pub status: Status,
    /// What the probe's start line said: the drop hook, the optional hooks attached, and
    /// every note on precision lost.
    pub drop_hook: Option<String>,
    pub hooks: Vec<String>,
    pub notes: Vec<String>,
    pub steps: Vec<StepResult>,
    pub console: String,
    pub problem: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Matrix {
    pub accel: Accel,
    pub steps: Vec<String>,
    pub kernels: Vec<KernelResult>,
}

/// The Debian release whose own kernel a series is.
fn distribution(series: &str) -> &'static str {
    match series {
        "5.10" => "Debian 11 (bullseye)",
        "6.1" => "Debian 12 (bookworm)",
        "6.12" => "Debian 13 (trixie)",
        _ => "",
    }
}

fn judge(step: &StepRun) -> StepResult {
    let error = step
        .output
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("droptrace: "))
        .map(str::to_string);
    let (passed, failed, failures) = test_counts(&step.output);
    let status = match (&step.skipped, step.hang, step.rc) {
        (Some(_), _, _) => Status::Skipped,
        (_, true, _) => Status::Hang,
        (_, _, None) => Status::NoResult,
        (_, _, Some(0)) => Status::Pass,
        (_, _, Some(3)) if error.is_some() && step.secs.is_some_and(|s| s <= FAST_REFUSAL_SECS) => {
            Status::Refused
        }
        _ => Status::Fail,
    };
    StepResult {
        name: step.name.clone(),
        status,
        rc: step.rc,
        secs: step.secs,
        passed,
        failed,
        failures,
        error: error.or_else(|| step.skipped.clone()),
    }
}

/// libtest's closing line (`test result: ok. 12 passed; 0 failed; …`) and failed tests.
fn test_counts(output: &str) -> (Option<u32>, Option<u32>, Vec<String>) {
    let mut passed = None;
    let mut failed = None;
    for line in output.lines().filter(|l| l.starts_with("test result:")) {
        let count = |word: &str| {
            line.split(';')
                .find(|p| p.trim_end().ends_with(word))
                .and_then(|p| p.split_whitespace().rev().nth(1))
                .and_then(|n| n.parse::<u32>().ok())
        };
        passed = count("passed").map(|n| n + passed.unwrap_or(0));
        failed = count("failed").map(|n| n + failed.unwrap_or(0));
    }
    let failures = output
        .lines()
        .filter_map(|l| l.strip_prefix("test ")?.strip_suffix(" ... FAILED"))
        .map(str::to_string)
        .collect();
    (passed, failed, failures)
}

impl KernelResult {
    pub fn new(
        pkg: &KernelPackage,
        release: &str,
        run: &GuestRun,
        killed: bool,
        console: &Path,
    ) -> Self {
        let steps: Vec<StepResult> = run.steps.iter().map(judge).collect();
        let start = run
            .steps
            .iter()
            .find(|s| s.name == "probe")
            .and_then(|s| s.output.lines().find(|l| l.contains("\"type\":\"start\"")))
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok());
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let problem = if killed {
            Some("the guest did not power off: killed by the host's deadline".to_string())
        } else if run.budget_exhausted {
            Some("the guest's budget ran out".to_string())
        } else if let Some(fatal) = &run.fatal {
            Some(fatal.clone())
        } else if !run.done {
            Some("the guest ended before its last step".to_string())
        } else {
            None
        };
        let status = overall(&steps, problem.is_some());
        Self {
            package: pkg.name.clone(),
            version: pkg.version.clone(),
            series: pkg.series.clone(),
            release: run.release.clone().unwrap_or_else(|| release.to_string()),
            distribution: distribution(&pkg.series),
            suite: String::new(),
            status,
            drop_hook: start
                .as_ref()
                .and_then(|s| s["hook"].as_str().map(str::to_string)),
            hooks: start
                .as_ref()
                .map(|s| strings(&s["signals"]))
                .unwrap_or_default(),
            notes: start
                .as_ref()
                .map(|s| strings(&s["notes"]))
                .unwrap_or_default(),
            steps,
            console: console.display().to_string(),
            problem,
        }
    }
}

/// Pass when every step passed; Refused when droptrace refused the kernel cleanly (probe
/// and demo both refused fast, tests skipped) and nothing hung; Fail otherwise.
fn overall(steps: &[StepResult], problem: bool) -> Status {
    let all = |ok: &[Status]| steps.iter().all(|s| ok.contains(&s.status));
    if problem {
        Status::Fail
    } else if steps.iter().any(|s| s.status == Status::Hang) {
        Status::Hang
    } else if all(&[Status::Pass, Status::Skipped])
        && steps.iter().any(|s| s.status == Status::Pass)
    {
        // A step a userland cannot run (bullseye has no netavark) is skipped, with why.
        Status::Pass
    } else if all(&[Status::Refused, Status::Skipped])
        && steps
            .iter()
            .any(|s| s.name == "demo" && s.status == Status::Refused)
    {
        Status::Refused
    } else {
        Status::Fail
    }
}

fn cell(s: &StepResult) -> String {
    let secs = s.secs.map(|t| format!(" {t:.0}s")).unwrap_or_default();
    match (s.status, s.passed, s.failed) {
        (Status::Pass, Some(p), _) => format!("pass {p}{secs}"),
        (Status::Fail, Some(p), Some(f)) => format!("FAIL {f}/{}{secs}", p + f),
        (Status::Pass, ..) => format!("pass{secs}"),
        (Status::Refused, ..) => format!("refused{secs}"),
        (Status::Fail, ..) => format!("FAIL rc={}{secs}", s.rc.unwrap_or(-1)),
        (Status::Hang, ..) => "HANG".to_string(),
        (Status::Skipped, ..) => "skipped".to_string(),
        (Status::NoResult, ..) => "no result".to_string(),
    }
}

impl Matrix {
    pub fn table(&self) -> String {
        let mut out = format!("\n{:<28} {:<22}", "KERNEL", "DEBIAN");
        for s in &self.steps {
            out.push_str(&format!(" {s:<14}"));
        }
        out.push_str(" HOOKS\n");
        for k in &self.kernels {
            out.push_str(&format!("{:<28} {:<22}", k.release, k.distribution));
            for name in &self.steps {
                let c = k
                    .steps
                    .iter()
                    .find(|s| &s.name == name)
                    .map(cell)
                    .unwrap_or_else(|| "no result".into());
                out.push_str(&format!(" {c:<14}"));
            }
            let mut hooks: Vec<String> = k.drop_hook.iter().cloned().collect();
            hooks.extend(k.hooks.iter().cloned());
            out.push_str(&format!(" {}\n", hooks.join(" ")));
        }
        for k in &self.kernels {
            out.push_str(&format!(
                "\n{} ({}): {:?}\n",
                k.release, k.package, k.status
            ));
            if let Some(p) = &k.problem {
                out.push_str(&format!("  problem: {p}\n"));
            }
            for s in &k.steps {
                if let Some(e) = &s.error {
                    out.push_str(&format!("  {}: {e}\n", s.name));
                }
                for f in &s.failures {
                    out.push_str(&format!("  {} failed: {f}\n", s.name));
                }
            }
            for n in &k.notes {
                out.push_str(&format!("  note: {n}\n"));
            }
            out.push_str(&format!("  console: {}\n", k.console));
        }
        out
    }

    /// Fails when a kernel failed or hung, or a series that must pass did not.
    pub fn check(&self, must_pass: &[String]) -> Result<()> {
        let mut bad = Vec::new();
        for k in &self.kernels {
            let required = must_pass.contains(&k.series) || must_pass.contains(&k.suite);
            match k.status {
                Status::Pass => {}
                Status::Refused if !required => {}
                other => bad.push(format!("{} ({} userland) {other:?}", k.release, k.suite)),
            }
        }
        for series in must_pass {
            if !self
                .kernels
                .iter()
                .any(|k| &k.series == series || &k.suite == series)
            {
                bad.push(format!("series {series} was not run"));
            }
        }
        if !bad.is_empty() {
            bail!("cargo xtask vm: {}", bad.join("; "));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, rc: i32, secs: f64, output: &str) -> StepRun {
        StepRun {
            name: name.into(),
            output: output.into(),
            rc: Some(rc),
            secs: Some(secs),
            ..StepRun::default()
        }
    }

    #[test]
    fn a_fast_exit_3_with_a_sentence_is_a_refusal_a_slow_one_a_failure() {
        let out = "droptrace: this kernel has no enum skb_drop_reason …\n";
        assert_eq!(judge(&step("demo", 3, 0.4, out)).status, Status::Refused);
        assert_eq!(judge(&step("demo", 3, 40.0, out)).status, Status::Fail);
        assert_eq!(judge(&step("demo", 3, 0.4, "")).status, Status::Fail);
        let hung = StepRun {
            hang: true,
            ..step("demo", 137, 600.0, "")
        };
        assert_eq!(judge(&hung).status, Status::Hang);
    }

    #[test]
    fn libtest_counts_and_failures_are_read() {
        let out = "test a ... ok\ntest b ... FAILED\n\ntest result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 3.2s\n";
        let r = judge(&step("drops", 101, 3.3, out));
        assert_eq!(r.status, Status::Fail);
        assert_eq!((r.passed, r.failed), (Some(1), Some(1)));
        assert_eq!(r.failures, ["b"]);
    }

    #[test]
    fn a_refused_kernel_is_refused_only_when_nothing_else_went_wrong() {
        let sentence = "droptrace: no drop reasons\n";
        let probe = judge(&step("probe", 3, 0.2, sentence));
        let demo = judge(&step("demo", 3, 0.3, sentence));
        let skipped = judge(&StepRun {
            name: "drops".into(),
            skipped: Some("refused".into()),
            ..StepRun::default()
        });
        let steps = vec![probe.clone(), demo.clone(), skipped.clone()];
        assert_eq!(overall(&steps, false), Status::Refused);
        assert_eq!(overall(&steps, true), Status::Fail);
        let hung = judge(&StepRun {
            hang: true,
            ..step("demo", 137, 600.0, "")
        });
        assert_eq!(overall(&[probe, hung, skipped], false), Status::Hang);
    }
}
