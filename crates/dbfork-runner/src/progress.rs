//! What the run shows while it goes: on a terminal, a live bar with the
//! counts and one line per worker with its current test; elsewhere (CI logs),
//! plain lines: each failure as it happens and a progress line now and then.
//! The final report (failures, closing line) is [`print_final`].

use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use dbfork_meta::report::{Outcome, RunReport, TestRecord, TryKind};

/// How often plain mode prints a progress line at most.
const PLAIN_EVERY: Duration = Duration::from_secs(10);

pub struct Progress {
    live: Option<Live>,
    verbose: u8,
    total: usize,
    done: usize,
    failed: usize,
    last_plain: Instant,
    last_percent: usize,
    /// Per test that ran more than once: its counted tries so far.
    tries: std::collections::HashMap<usize, usize>,
}

struct Live {
    _multi: MultiProgress,
    bar: ProgressBar,
    workers: Vec<ProgressBar>,
}

/// Prints notes above the live display (or as plain lines).
#[derive(Clone)]
pub struct Notes {
    bar: Option<ProgressBar>,
}

impl Notes {
    pub fn note(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("dbfork: {message}")),
            None => dbfork_meta::say!("dbfork: {message}"),
        }
    }
}

pub fn label(slot: usize) -> String {
    format!("gw{slot}")
}

impl Progress {
    pub fn new(live: bool, verbose: u8, slots: usize) -> Progress {
        let live = live.then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
            let bar = multi.add(ProgressBar::new(0));
            // No bar before the tests are known (a bar of length 0 is drawn full).
            bar.set_style(
                ProgressStyle::with_template("{elapsed:>4} {spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_message("preparing the template and starting the workers");
            bar.enable_steady_tick(std::time::Duration::from_millis(250));
            let workers = (0..slots)
                .map(|slot| {
                    let line = multi.add(ProgressBar::new_spinner());
                    line.set_style(
                        ProgressStyle::with_template("  {prefix} {wide_msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    line.set_prefix(label(slot));
                    line.set_message("making its clone");
                    line
                })
                .collect();
            Live {
                _multi: multi,
                bar,
                workers,
            }
        });
        Progress {
            live,
            verbose,
            total: 0,
            done: 0,
            failed: 0,
            last_plain: Instant::now(),
            last_percent: 0,
            tries: Default::default(),
        }
    }

    /// A message that is not about one test (setup, restarts).
    pub fn note(&self, message: &str) {
        self.notes().note(message);
    }

    /// A handle that prints notes as [`Progress::note`] does, for work that
    /// goes on beside the run's loop (the template's build).
    pub fn notes(&self) -> Notes {
        Notes {
            bar: self.live.as_ref().map(|live| live.bar.clone()),
        }
    }

    pub fn collected(&mut self, total: usize) {
        self.total = total;
        if let Some(live) = &self.live {
            live.bar.set_style(
                ProgressStyle::with_template("{elapsed:>4} [{bar:30.cyan/blue}] {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            live.bar.set_message("");
            live.bar.set_length(total as u64);
        } else {
            dbfork_meta::say!(
                "dbfork: collected {total} test{}",
                if total == 1 { "" } else { "s" }
            );
        }
    }

    pub fn worker(&self, slot: usize, status: &str) {
        if let Some(line) = self.live.as_ref().and_then(|l| l.workers.get(slot)) {
            line.set_message(status.to_string());
        }
    }

    pub fn finished(&mut self, record: &TestRecord) {
        let (line, show) = self.count(record);
        self.show(line, show);
    }

    /// A test's line (shown when `show`, or with -v) and the counts.
    fn show(&mut self, line: String, failed: bool) {
        match &self.live {
            Some(live) => {
                if failed || self.verbose > 0 {
                    live.bar.println(line);
                }
                live.bar.set_position(self.done as u64);
                live.bar.set_message(if self.failed > 0 {
                    format!("{} failed", self.failed)
                } else {
                    String::new()
                });
            }
            None => {
                for line in self.plain_lines(line, failed) {
                    dbfork_meta::say!("{line}");
                }
            }
        }
    }

    /// A try of a test that runs more than once: the run's failure as any
    /// failure (counted now: a retry that passes takes it back), a retry in
    /// nextest's words (`TRY 2 PASSED ...`), a classifying probe with -v.
    pub fn tried(&mut self, record: &TestRecord, kind: TryKind) {
        let tries = self.tries.entry(record.index).or_default();
        if kind.counts() {
            *tries += 1;
        }
        let line = match kind {
            TryKind::Run => {
                self.done += 1;
                self.failed += 1;
                return self.show(test_line(record), true);
            }
            TryKind::Retry => format!("TRY {} {}", *tries, test_line(record)),
            TryKind::Alone if self.verbose > 0 => format!("ALONE {}", test_line(record)),
            TryKind::Replay if self.verbose > 0 => format!("REPLAY {}", test_line(record)),
            _ => return,
        };
        match &self.live {
            Some(live) => live.bar.println(line),
            None => dbfork_meta::say!("{line}"),
        }
    }

    /// Counts a finished test; its line (`FAILED id [gw1] 0.12s`) and
    /// whether it is worth showing (it failed, or was flaky).
    pub(crate) fn count(&mut self, record: &TestRecord) -> (String, bool) {
        let failed = record.outcome.is_failure();
        if record.tries.is_empty() {
            self.done += 1;
            self.failed += usize::from(failed);
        } else if !failed {
            // Counted as failed at its first try.
            self.failed = self.failed.saturating_sub(1);
        }
        let mut line = test_line(record);
        if record.is_flaky() {
            line = format!("FLAKY {line}");
        }
        if let Some(diagnosis) = &record.diagnosis {
            line.push_str(&format!(" ({})", diagnosis.class.as_str()));
        }
        // A test that ran more than once showed each try: its last line is
        // worth showing when it says more (flaky, or its class).
        let news = record.tries.is_empty() || record.is_flaky() || record.diagnosis.is_some();
        (line, news && (failed || record.is_flaky()))
    }

    /// What plain mode prints for a finished test: its line (a failure, or
    /// every test with -v), and a progress line at every quarter of the
    /// suite or after [`PLAIN_EVERY`] without one.
    pub(crate) fn plain_lines(&mut self, line: String, failed: bool) -> Vec<String> {
        let mut lines = Vec::new();
        if failed || self.verbose > 0 {
            lines.push(line);
        }
        let percent = (self.done * 100).checked_div(self.total).unwrap_or(0);
        if self.verbose == 0
            && (percent / 25 > self.last_percent / 25 || self.last_plain.elapsed() >= PLAIN_EVERY)
            && self.done < self.total
        {
            self.last_percent = percent;
            self.last_plain = Instant::now();
            lines.push(format!(
                "dbfork: [{percent:>3}%] {}/{} tests done, {} failed",
                self.done, self.total, self.failed
            ));
        }
        lines
    }

    /// Clears the live lines before the final report.
    pub fn clear(&self) {
        if let Some(live) = &self.live {
            for line in &live.workers {
                line.finish_and_clear();
            }
            live.bar.finish_and_clear();
        }
    }
}

/// `FAILED id [gw1] 0.12s`.
fn test_line(record: &TestRecord) -> String {
    let worker = record.slot.map(label).unwrap_or_default();
    format!(
        "{} {} [{worker}] {:.2}s",
        record.outcome.as_str().to_uppercase(),
        record.id,
        record.duration
    )
}

fn rule(title: &str, fill: char) -> String {
    let width: usize = 80;
    if title.is_empty() {
        return fill.to_string().repeat(width);
    }
    let side = width.saturating_sub(title.len() + 2) / 2;
    let left = fill.to_string().repeat(side.max(1));
    let right = fill
        .to_string()
        .repeat(width.saturating_sub(side + title.len() + 2).max(1));
    format!("{left} {title} {right}")
}

/// The end of the run on stdout, as pytest shows it: collection errors,
/// failures with their output, the short summary, and the closing line.
pub fn print_final(report: &RunReport) {
    // Never a panic on a closed stdout (`| head`): the run's exit code stands.
    let mut stdout = std::io::stdout();
    let _ = std::io::Write::write_all(&mut stdout, final_text(report).as_bytes());
    let _ = std::io::Write::flush(&mut stdout);
}

/// What [`print_final`] prints: the errors, the failures, their short
/// summary, and the closing line.
pub(crate) fn final_text(report: &RunReport) -> String {
    let mut out = String::new();
    if !report.collect_errors.is_empty() {
        out.push_str(&rule("ERRORS", '='));
        out.push('\n');
        for (id, text) in &report.collect_errors {
            out.push_str(&rule(&format!("ERROR collecting {id}"), '_'));
            out.push_str(&format!("\n{}\n", text.trim_end()));
        }
    }
    let failures: Vec<&TestRecord> = report
        .tests
        .iter()
        .filter(|t| t.outcome.is_failure())
        .collect();
    if !failures.is_empty() {
        out.push_str(&rule("FAILURES", '='));
        out.push('\n');
        for test in &failures {
            let worker = test.slot.map(label).unwrap_or_default();
            let what = match test.outcome {
                Outcome::Error => format!("ERROR at {} of {}", error_phase(test), test.id),
                _ => test.id.clone(),
            };
            out.push_str(&rule(&format!("{what} [{worker}]"), '_'));
            out.push('\n');
            if let Some(text) = &test.longrepr {
                out.push_str(text.trim_end());
                out.push('\n');
            }
            for (name, text) in [("stdout", &test.stdout), ("stderr", &test.stderr)] {
                if !text.trim().is_empty() {
                    out.push_str(&rule(&format!("Captured {name}"), '-'));
                    out.push_str(&format!("\n{}\n", text.trim_end()));
                }
            }
        }
    }
    if !failures.is_empty() || !report.collect_errors.is_empty() {
        out.push_str(&rule("short test summary info", '='));
        out.push('\n');
        for (id, _) in &report.collect_errors {
            out.push_str(&format!("ERROR {id}\n"));
        }
        for test in &failures {
            let first = test
                .longrepr
                .as_deref()
                .and_then(|t| {
                    // pytest's crash message: the first `E` line; of a Python
                    // traceback (unittest's), the exception: its last line.
                    t.lines().find(|l| l.starts_with("E ")).or_else(|| {
                        if t.starts_with("Traceback") {
                            t.lines().rev().find(|l| !l.trim().is_empty())
                        } else {
                            t.lines().next()
                        }
                    })
                })
                .unwrap_or("")
                .trim_start_matches("E ")
                .trim();
            let word = match test.outcome {
                Outcome::Error => "ERROR",
                _ => "FAILED",
            };
            out.push_str(&format!("{word} {} - {first}\n", test.id));
            out.push_str(&diagnosis_lines(test));
        }
    }
    out.push_str(&flaky_text(report));
    if report.interrupted {
        // As pytest says it, before its closing line.
        let not_run = match report.not_run() {
            0 => String::new(),
            1 => ": 1 test not run".to_string(),
            n => format!(": {n} tests not run"),
        };
        out.push_str(&rule(&format!("Interrupted{not_run}"), '!'));
        out.push('\n');
    }
    out.push_str(&rule(&report.summary_line(), '='));
    out.push('\n');
    out
}

/// The tests that failed, then passed on a retry, with the try that passed.
fn flaky_text(report: &RunReport) -> String {
    let flaky: Vec<&TestRecord> = report.tests.iter().filter(|t| t.is_flaky()).collect();
    if flaky.is_empty() {
        return String::new();
    }
    let mut out = rule("flaky tests (failed, then passed on a retry)", '=');
    out.push('\n');
    for test in flaky {
        let counted: Vec<_> = test.tries.iter().filter(|t| t.kind.counts()).collect();
        let passed = 1
            + (counted.iter())
                .position(|t| !t.outcome.is_failure())
                .unwrap_or(0);
        out.push_str(&format!(
            "FLAKY {} - passed on try {passed} of {}\n",
            test.id,
            counted.len()
        ));
        out.push_str(&diagnosis_lines(test));
    }
    out
}

/// What dbfork found of a failure, under its summary line: its class and
/// why, and for an order-dependent one the tests it fails after.
fn diagnosis_lines(test: &TestRecord) -> String {
    let Some(diagnosis) = &test.diagnosis else {
        return String::new();
    };
    let mut out = format!("  {}: {}\n", diagnosis.class.as_str(), diagnosis.why);
    if !diagnosis.after.is_empty() {
        let shown = diagnosis.after.len().min(5);
        let earlier = diagnosis.earlier + diagnosis.after.len() - shown;
        out.push_str("  fails after (the last tests its worker ran before it, in order):\n");
        if earlier > 0 {
            out.push_str(&format!("    ... {earlier} earlier\n"));
        }
        for id in &diagnosis.after[diagnosis.after.len() - shown..] {
            out.push_str(&format!("    {id}\n"));
        }
        if diagnosis.culprits.is_empty() {
            out.push_str(&format!(
                "  which one: dbfork bisect {}\n",
                shell_word(&test.id)
            ));
        } else {
            out.push_str("  it fails when these run before it (--bisect):\n");
            for culprit in &diagnosis.culprits {
                out.push_str(&format!("    {culprit}\n"));
            }
        }
    }
    out
}

/// `word` as a shell reads it back.
pub fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn error_phase(test: &TestRecord) -> &str {
    test.phases
        .iter()
        .find(|p| p.outcome == "failed")
        .map(|p| p.when.as_str())
        .unwrap_or("setup")
}

#[cfg(test)]
mod tests {
    use dbfork_meta::report::{Outcome, RunReport, TestRecord};

    use super::final_text;

    fn record(index: usize, outcome: Outcome) -> TestRecord {
        TestRecord {
            index,
            id: format!("tests/test_a.py::test_{index}"),
            file: "tests/test_a.py".to_string(),
            class: None,
            outcome,
            duration: 0.1,
            slot: Some(0),
            worker_id: None,
            phases: Vec::new(),
            longrepr: None,
            stdout: String::new(),
            stderr: String::new(),
            tries: Vec::new(),
            diagnosis: None,
        }
    }

    /// Ctrl-C's closing lines say the run was interrupted and how many tests
    /// did not run, as the JSON report does.
    #[test]
    fn an_interrupted_run_says_so_and_counts_what_did_not_run() {
        let mut tests: Vec<TestRecord> = (0..3).map(|i| record(i, Outcome::Passed)).collect();
        tests.extend((3..26).map(|i| record(i, Outcome::NotRun)));
        let mut report = RunReport {
            command: vec!["pytest".to_string()],
            run_id: "r".to_string(),
            duration: 5.09,
            started_at: 0.0,
            exit_code: 2,
            interrupted: true,
            slots: Vec::new(),
            tests,
            collect_errors: Vec::new(),
            collect_skipped: Vec::new(),
            shard: None,
            bisect: None,
        };
        assert_eq!(
            final_text(&report),
            "!!!!!!!!!!!!!!!!!!!!!!!! Interrupted: 23 tests not run !!!!!!!!!!!!!!!!!!!!!!!!!\n\
             ======================== 3 passed, 23 not run in 5.09s =========================\n"
        );
        report.interrupted = false;
        report.tests.truncate(3);
        assert_eq!(
            final_text(&report),
            "============================== 3 passed in 5.09s ===============================\n"
        );
    }
}
