//! `dbfork report html`: a recorded run as one self-contained page (no
//! network when it is opened): the timeline per worker and of the database
//! (a canvas, so 10,000 tests draw at once), the failures with their output
//! and class, the flaky tests, setup against test time per worker, the
//! slowest tests, and a search that finds and opens any test (`#find=TEXT`
//! in the address does the same on load). The page is `report.html` with the
//! run's data in it as JSON.

use serde_json::{json, Value};

use crate::timeline::Timeline;
use dbfork_meta::report::RunReport;

const TEMPLATE: &str = include_str!("report.html");

/// The page of a run: its report and its recording's event lines.
pub fn page(report: &RunReport, events: &[Value]) -> String {
    let data = json!({
        "run": {
            "run_id": report.run_id,
            "command": report.command,
            "summary": report.summary_line(),
            "exit_code": report.exit_code,
            "duration": report.duration,
            "started_at": report.started_at,
            "slots": report.slots,
        },
        "tests": report.tests,
        "timeline": Timeline::from_events(events),
    });
    // In a script element the text must not close it: `<` only occurs in
    // JSON's strings, where `\u003c` reads back the same.
    let data = data.to_string().replace('<', "\\u003c");
    let title: String = (report.run_id.chars())
        .filter(|c| c.is_ascii_alphanumeric() || *c == '+')
        .collect();
    TEMPLATE
        .replacen("__TITLE__", &title, 1)
        .replacen("__DATA__", &data, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_cannot_close_its_script() {
        let mut report: RunReport =
            serde_json::from_value(json!({"command": ["pytest"], "run_id": "ab12", "duration": 1.0, "started_at": 0.0, "exit_code": 1, "interrupted": false, "slots": [], "tests": [], "collect_errors": [], "collect_skipped": []}))
                .unwrap();
        report.command = vec!["</script><script>alert(1)</script>".into()];
        let page = page(&report, &[]);
        assert_eq!(page.matches("</script>").count(), 2, "only the page's own");
        assert!(page.contains("\\u003c/script>\\u003cscript>alert(1)"));
        assert!(page.contains("<title>dbfork run ab12</title>"));
    }
}
