//! A run as spans on tracks: one track per worker slot (its start and
//! collection, each test, each try of a failed test) and one for the
//! database (the template, each clone made, each drop, the teardown). Made
//! from the recording's event lines (`events.jsonl`: each with `t`, seconds
//! from the start), so the HTML report of a recorded run and the
//! `--trace` file of a running one read the same thing. [`Timeline::chrome_trace`]
//! writes the Chrome trace event format that Perfetto and `chrome://tracing` open.

use serde::Serialize;
use serde_json::{json, Value};

/// The database's track, after the workers'.
pub const DATABASE: &str = "database";

/// What a span is: a test's outcome (`passed`, `failed`, ...), a worker's
/// state (`starting`, `collecting`, ...), or the database's work (`clone`,
/// `drop`, `template`, `teardown`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Span {
    pub track: usize,
    pub start: f64,
    pub duration: f64,
    pub kind: String,
    pub name: String,
    /// The test's position in the run's report, for a test's span.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<usize>,
    /// A try that is not the test's own place in the run: `retry`,
    /// `alone`, `replay`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Timeline {
    /// `gw0`, `gw1`, ..., then [`DATABASE`].
    pub tracks: Vec<String>,
    pub spans: Vec<Span>,
    /// Seconds from the start to the last event.
    pub end: f64,
}

/// A worker's state that is not a test: shown as a span until its next state.
fn is_state(status: &str) -> bool {
    matches!(
        status,
        "starting"
            | "starting while the template is prepared"
            | "collecting"
            | "making a fresh clone"
            | "ready"
    )
}

impl Timeline {
    /// The timeline of a run's event lines, in the order written.
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a Value>) -> Timeline {
        let mut timeline = Timeline::default();
        // Per slot: the state it is in and since when; whether its worker
        // replays tests before a failed one (their runs are drawn from its
        // states: they are not the tests' own tries).
        let mut states: Vec<Option<(String, f64)>> = Vec::new();
        let mut replaying: Vec<bool> = Vec::new();
        let mut database = Vec::new();
        for event in events {
            let t = event["t"].as_f64().unwrap_or(0.0);
            timeline.end = timeline.end.max(t);
            match event["event"].as_str().unwrap_or("") {
                "worker" => {
                    let Some(slot) = event["slot"].as_u64().map(|s| s as usize) else {
                        continue;
                    };
                    if states.len() <= slot {
                        states.resize(slot + 1, None);
                        replaying.resize(slot + 1, false);
                    }
                    if let Some((state, since)) = states[slot].take() {
                        let kind = if is_state(&state) { "state" } else { "replay" };
                        timeline.span(slot, since, t - since, kind, &state, None, None);
                    }
                    let status = event["status"].as_str().unwrap_or("");
                    if status.starts_with("replaying ") || status.starts_with("probing ") {
                        replaying[slot] = true;
                    } else if matches!(status, "done" | "finished") || status.contains(' ') {
                        replaying[slot] = false;
                    }
                    let replayed = replaying[slot] && !is_state(status) && !status.contains(' ');
                    if is_state(status) || replayed {
                        states[slot] = Some((status.to_string(), t));
                    }
                }
                "test" | "try" => {
                    let test = &event["test"];
                    let Some(slot) = test["slot"].as_u64().map(|s| s as usize) else {
                        continue;
                    };
                    // A test that ran more than once was drawn at each try.
                    let tried = test["tries"].as_array().is_some_and(|t| !t.is_empty());
                    if event["event"] == "test" && tried {
                        continue;
                    }
                    let duration = test["duration"].as_f64().unwrap_or(0.0);
                    let probe = event["kind"]
                        .as_str()
                        .filter(|k| *k != "run")
                        .map(str::to_string);
                    timeline.span(
                        slot,
                        (t - duration).max(0.0),
                        duration,
                        test["outcome"].as_str().unwrap_or(""),
                        test["id"].as_str().unwrap_or(""),
                        test["index"].as_u64().map(|i| i as usize),
                        probe,
                    );
                }
                "database" => {
                    let seconds = event["seconds"].as_f64().unwrap_or(0.0);
                    database.push(Span {
                        track: 0,
                        start: (t - seconds).max(0.0),
                        duration: seconds,
                        kind: event["what"].as_str().unwrap_or("").to_string(),
                        name: event["name"].as_str().unwrap_or("").to_string(),
                        test: None,
                        probe: None,
                    });
                }
                _ => {}
            }
        }
        let end = timeline.end;
        for (slot, state) in states.into_iter().enumerate() {
            if let Some((state, since)) = state {
                let kind = if is_state(&state) { "state" } else { "replay" };
                timeline.span(slot, since, end - since, kind, &state, None, None);
            }
        }
        let workers = timeline.tracks.len();
        timeline.tracks.push(DATABASE.to_string());
        for mut span in database {
            span.track = workers;
            timeline.spans.push(span);
        }
        timeline
            .spans
            .sort_by(|a, b| (a.track, a.start).partial_cmp(&(b.track, b.start)).unwrap());
        timeline
    }

    #[allow(clippy::too_many_arguments)]
    fn span(
        &mut self,
        slot: usize,
        start: f64,
        duration: f64,
        kind: &str,
        name: &str,
        test: Option<usize>,
        probe: Option<String>,
    ) {
        while self.tracks.len() <= slot {
            self.tracks.push(crate::progress::label(self.tracks.len()));
        }
        self.spans.push(Span {
            track: slot,
            start,
            duration: duration.max(0.0),
            kind: kind.to_string(),
            name: name.to_string(),
            test,
            probe,
        });
    }

    /// The Chrome trace event format (`{"traceEvents": [...]}`): one thread
    /// per track, named, and a complete event (`ph: X`) per span, in
    /// microseconds.
    pub fn chrome_trace(&self, run_id: &str) -> Value {
        let mut events = vec![json!({
            "name": "process_name", "ph": "M", "pid": 1,
            "args": {"name": format!("dbfork run {run_id}")},
        })];
        for (tid, track) in self.tracks.iter().enumerate() {
            events.push(json!({
                "name": "thread_name", "ph": "M", "pid": 1, "tid": tid,
                "args": {"name": track},
            }));
            events.push(json!({
                "name": "thread_sort_index", "ph": "M", "pid": 1, "tid": tid,
                "args": {"sort_index": tid},
            }));
        }
        let micros = |s: f64| (s * 1_000_000.0).round() as i64;
        for span in &self.spans {
            let mut args = json!({"kind": span.kind});
            if let Some(probe) = &span.probe {
                args["probe"] = json!(probe);
            }
            events.push(json!({
                "name": span.name,
                "cat": span.kind,
                "ph": "X",
                "pid": 1,
                "tid": span.track,
                "ts": micros(span.start),
                "dur": micros(span.duration),
                "args": args,
            }));
        }
        json!({"traceEvents": events, "displayTimeUnit": "ms"})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_become_spans_per_track() {
        let lines = [
            json!({"event": "worker", "slot": 0, "status": "starting", "t": 0.1}),
            json!({"event": "worker", "slot": 1, "status": "collecting", "t": 0.2}),
            json!({"event": "database", "what": "clone", "name": "dbfork_r_0", "seconds": 0.05, "t": 0.3}),
            json!({"event": "worker", "slot": 0, "status": "t.py::a", "t": 0.5}),
            json!({"event": "test", "test": {"index": 0, "id": "t.py::a", "slot": 0, "duration": 0.25, "outcome": "passed"}, "t": 0.8}),
            json!({"event": "try", "kind": "run", "test": {"index": 1, "id": "t.py::b", "slot": 1, "duration": 0.1, "outcome": "failed"}, "t": 0.9}),
            json!({"event": "try", "kind": "alone", "test": {"index": 1, "id": "t.py::b", "slot": 1, "duration": 0.1, "outcome": "passed"}, "t": 1.4}),
            json!({"event": "test", "test": {"index": 1, "id": "t.py::b", "slot": 1, "duration": 0.1, "outcome": "failed", "tries": [{}]}, "t": 1.5}),
            json!({"event": "worker", "slot": 0, "status": "replaying 2 tests", "t": 1.6}),
            json!({"event": "worker", "slot": 0, "status": "collecting", "t": 1.62}),
            json!({"event": "worker", "slot": 0, "status": "t.py::a", "t": 1.7}),
            json!({"event": "worker", "slot": 0, "status": "t.py::b", "t": 1.8}),
            json!({"event": "worker", "slot": 0, "status": "done", "t": 1.9}),
            json!({"event": "finished", "t": 2.0}),
        ];
        let timeline = Timeline::from_events(&lines);
        assert_eq!(timeline.tracks, ["gw0", "gw1", "database"]);
        assert_eq!(timeline.end, 2.0);
        let shown: Vec<(usize, String, String, Option<String>)> = timeline
            .spans
            .iter()
            .map(|s| (s.track, s.kind.clone(), s.name.clone(), s.probe.clone()))
            .collect();
        let row = |track, kind: &str, name: &str, probe: Option<&str>| {
            (
                track,
                kind.to_string(),
                name.to_string(),
                probe.map(str::to_string),
            )
        };
        assert_eq!(
            shown,
            [
                row(0, "state", "starting", None),
                row(0, "passed", "t.py::a", None),
                row(0, "state", "collecting", None),
                row(0, "replay", "t.py::a", None),
                row(0, "replay", "t.py::b", None),
                row(1, "state", "collecting", None),
                row(1, "failed", "t.py::b", None),
                row(1, "passed", "t.py::b", Some("alone")),
                row(2, "clone", "dbfork_r_0", None),
            ]
        );
        let a = &timeline.spans[1];
        assert!((a.start - 0.55).abs() < 1e-9 && a.test == Some(0), "{a:?}");
        let trace = timeline.chrome_trace("r");
        let events = trace["traceEvents"].as_array().unwrap();
        let test = events.iter().find(|e| e["name"] == "t.py::a").unwrap();
        assert_eq!(
            (test["ts"].as_i64(), test["dur"].as_i64()),
            (Some(550_000), Some(250_000))
        );
        assert!(events
            .iter()
            .any(|e| e["name"] == "thread_name" && e["args"]["name"] == "database"));
    }
}
