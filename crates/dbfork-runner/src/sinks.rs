//! What happens in a run, as one stream of [`RunEvent`]s, and the sinks made
//! from it: the terminal ([`Progress`]), the report files (JUnit, JSON) and
//! the timings the next run schedules by. The executor only emits; a new
//! consumer (the pool service's live feed, a shard's uploader) is one more
//! [`Sink`], not another call in the executor.

use std::path::PathBuf;

use crate::error::exit;
use crate::progress::Progress;
use crate::report;
use crate::timings::Timings;
use dbfork_meta::report::{RunReport, TestRecord, TryKind};

/// One thing that happened in a run.
#[derive(Debug)]
pub enum RunEvent<'a> {
    /// A message that is not about one test (setup, restarts).
    Note(&'a str),
    /// The run's tests are known: how many.
    Collected(usize),
    /// A worker's state changed ("collecting", the test it runs, "done").
    Worker { slot: usize, status: &'a str },
    /// A test has its outcome.
    TestFinished(&'a TestRecord),
    /// One try of a test that runs more than once (`--retries`,
    /// `--classify`); [`RunEvent::TestFinished`] follows once it is decided.
    Tried {
        record: &'a TestRecord,
        kind: TryKind,
    },
    /// The database did something for the run, in `seconds`: `template`
    /// (ready), `clone` (made), `drop`, `teardown` (every clone dropped).
    Database {
        what: &'a str,
        name: &'a str,
        seconds: f64,
    },
    /// The workers are gone and the clones dropped: the live display ends.
    Ending,
    /// The run's report is complete.
    Finished {
        report: &'a RunReport,
        /// The run got as far as its tests (no error of dbfork's own, a test
        /// tool dbfork talked to): its timings are worth keeping.
        timed: bool,
    },
}

pub trait Sink: Send {
    fn event(&mut self, event: &RunEvent);
}

impl Sink for Progress {
    fn event(&mut self, event: &RunEvent) {
        match event {
            RunEvent::Note(message) => self.note(message),
            RunEvent::Collected(total) => self.collected(*total),
            RunEvent::Worker { slot, status } => self.worker(*slot, status),
            RunEvent::TestFinished(record) => self.finished(record),
            RunEvent::Tried { record, kind } => self.tried(record, *kind),
            RunEvent::Ending => self.clear(),
            RunEvent::Database { .. } => {}
            RunEvent::Finished { report, .. } => {
                // The summary, as soon as it is known; a run that stopped
                // before its tests has said why already.
                if !report.tests.is_empty()
                    || !report.collect_errors.is_empty()
                    || report.exit_code == exit::NO_TESTS
                {
                    crate::progress::print_final(report);
                }
            }
        }
    }
}

/// `--junit FILE` and `--json FILE`, written when the run is finished.
pub struct ReportFiles {
    pub junit: Option<PathBuf>,
    pub json: Option<PathBuf>,
}

impl Sink for ReportFiles {
    fn event(&mut self, event: &RunEvent) {
        let RunEvent::Finished { report, .. } = event else {
            return;
        };
        if let Some(path) = &self.junit {
            if let Err(e) = report::write_junit(report, path) {
                dbfork_meta::say!("dbfork: warning: {e}");
            }
        }
        if let Some(path) = &self.json {
            if let Err(e) = report::write_json(report, path) {
                dbfork_meta::say!("dbfork: warning: {e}");
            }
        }
    }
}

/// `--trace FILE`: the run's timeline in the Chrome trace event format
/// (Perfetto, `chrome://tracing`), written when the run is finished.
pub struct TraceFile {
    pub path: PathBuf,
    pub started: std::time::Instant,
    pub lines: Vec<serde_json::Value>,
}

impl Sink for TraceFile {
    fn event(&mut self, event: &RunEvent) {
        if let Some(mut line) = crate::recording::event_json(event) {
            // Only what the timeline reads: no test's output.
            if let Some(test) = line.get_mut("test").and_then(|t| t.as_object_mut()) {
                test.retain(|k, _| {
                    ["index", "id", "slot", "duration", "outcome", "tries"].contains(&k.as_str())
                });
            }
            line["t"] = serde_json::json!(self.started.elapsed().as_secs_f64());
            self.lines.push(line);
        }
        let RunEvent::Finished { report, .. } = event else {
            return;
        };
        let timeline = crate::timeline::Timeline::from_events(&self.lines);
        let text = timeline.chrome_trace(&report.run_id).to_string();
        if let Err(e) = report::write_atomic(&self.path, text.as_bytes()) {
            dbfork_meta::say!(
                "dbfork: warning: could not write the trace {}: {e}",
                self.path.display()
            );
        }
    }
}

/// The tests' durations, kept in the state directory for the next run's
/// schedule.
pub struct TimingsFile {
    pub timings: Timings,
    pub state_dir: PathBuf,
}

impl Sink for TimingsFile {
    fn event(&mut self, event: &RunEvent) {
        let RunEvent::Finished {
            report,
            timed: true,
        } = event
        else {
            return;
        };
        self.timings.record(report);
        if let Err(e) = self.timings.save(&self.state_dir) {
            dbfork_meta::say!(
                "dbfork: warning: could not save the timings in {}: {e}",
                self.state_dir.display()
            );
        }
    }
}
