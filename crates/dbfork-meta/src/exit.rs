//! Exit codes, one table for every command. `dbfork run` follows pytest's
//! codes where they overlap (so a CI script that reads pytest's reads
//! dbfork's); `dbfork db ...` uses the same numbers for the same kinds of
//! outcome.

pub const OK: i32 = 0;
/// `dbfork run`: tests failed, crashed or timed out.
pub const TESTS_FAILED: i32 = 1;
/// `dbfork db`: the setup command failed (or `--verify` found a difference).
pub const SETUP_FAILED: i32 = 1;
pub const INTERRUPTED: i32 = 2;
/// A database or server error; for `dbfork run` also a failed setup: the
/// suite did not run.
pub const SETUP_OR_DATABASE: i32 = 3;
pub const USAGE: i32 = 4;
/// `dbfork run`: no tests were collected.
pub const NO_TESTS: i32 = 5;

/// What went wrong, as far as the exit code is concerned: every error type
/// of dbfork says which of these it is (`kind()`), and [`Failure::code`]
/// alone turns that into a number, per command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A mistake in how dbfork was called: a flag, a URL, a file, a name.
    Usage,
    /// Ctrl-C, SIGTERM or SIGHUP.
    Interrupted,
    /// The setup command failed, could not start or ran too long.
    SetupFailed,
    /// A database or server error, or anything else that is not the
    /// caller's mistake.
    Database,
}

/// The two families of commands whose codes differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `dbfork run` (and `db fingerprint`): pytest's codes.
    Run,
    /// `dbfork db ...`, `clean`, `report`.
    Db,
}

impl Failure {
    /// The exit code of this failure for a command of `family`.
    pub fn code(self, family: Family) -> i32 {
        match (self, family) {
            (Failure::Usage, _) => USAGE,
            (Failure::Interrupted, _) => INTERRUPTED,
            // A run whose setup failed did not run its suite: that is 3,
            // never pytest's 1 ("tests failed").
            (Failure::SetupFailed, Family::Run) => SETUP_OR_DATABASE,
            (Failure::SetupFailed, Family::Db) => SETUP_FAILED,
            (Failure::Database, _) => SETUP_OR_DATABASE,
        }
    }
}

/// One exit code and what it means for each command.
pub struct ExitCode {
    pub code: i32,
    /// Its meaning for `dbfork run` (markdown).
    pub run: &'static str,
    /// Its meaning for `dbfork db ...` (markdown; empty: never).
    pub db: &'static str,
}

/// Every exit code, in order.
pub const EXIT_CODES: &[ExitCode] = &[
    ExitCode {
        code: OK,
        run: "all tests passed",
        db: "done",
    },
    ExitCode {
        code: TESTS_FAILED,
        run: "tests failed, crashed or timed out (or some could not run)",
        db: "the setup command failed (or could not start, or ran past `--build-timeout`), or `db template --verify` found a difference",
    },
    ExitCode {
        code: INTERRUPTED,
        run: "interrupted (Ctrl-C, SIGTERM), or collection errors",
        db: "interrupted (Ctrl-C, SIGTERM); what the command had made is dropped first",
    },
    ExitCode {
        code: SETUP_OR_DATABASE,
        run: "the setup command failed, or a database or server error: the suite did not run",
        db: "a database or server error: unreachable, refused, a query failed, a drop timed out",
    },
    ExitCode {
        code: USAGE,
        run: "a usage error (pytest's own, a bad or unknown flag or configuration, a command that cannot start)",
        db: "a usage error: a bad URL, flag or input pattern, an unknown template, a database that is not dbfork's, missing server binaries",
    },
    ExitCode {
        code: NO_TESTS,
        run: "no tests were collected",
        db: "",
    },
];

/// The markdown table of one command's codes (`run` or `db`).
pub fn markdown(command: &str) -> String {
    let mut out = String::from("| code | meaning |\n|---|---|\n");
    for c in EXIT_CODES {
        let meaning = if command == "run" { c.run } else { c.db };
        if !meaning.is_empty() {
            out.push_str(&format!("| {} | {meaning} |\n", c.code));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_listed_once_in_order() {
        let codes: Vec<i32> = EXIT_CODES.iter().map(|c| c.code).collect();
        assert_eq!(codes, [0, 1, 2, 3, 4, 5]);
        assert!(markdown("db").contains("| 4 | a usage error: a bad URL"));
        assert!(!markdown("db").contains("| 5 |"));
    }

    /// Every failure's code is in the table, with a meaning for its family.
    #[test]
    fn every_failure_has_a_documented_code() {
        for failure in [
            Failure::Usage,
            Failure::Interrupted,
            Failure::SetupFailed,
            Failure::Database,
        ] {
            for family in [Family::Run, Family::Db] {
                let code = failure.code(family);
                let row = EXIT_CODES.iter().find(|c| c.code == code).unwrap();
                let meaning = if family == Family::Run {
                    row.run
                } else {
                    row.db
                };
                assert!(!meaning.is_empty(), "{failure:?} {family:?}");
            }
        }
    }
}
