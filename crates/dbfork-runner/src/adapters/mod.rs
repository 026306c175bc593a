//! The test tools dbfork drives, one module each, behind one interface: how
//! to recognise a command, what of its options is refused or does nothing
//! under dbfork, whether its workers speak the protocol and whether it is
//! configured once in a controller first, the default grouping, the words
//! added to its command line, its support files (the Python packages put on
//! `PYTHONPATH`), and the "stop after N failures" its command line asks for
//! (the worker's hello says better, once it connects). A new tool is a new
//! module and one arm of [`tool`].

use std::io;
use std::path::{Path, PathBuf};

use crate::{Adapter, Dist};

mod django;
mod generic;
mod pytest;

pub trait Tool: Sync {
    /// Whether `command` runs this tool (`--adapter auto`).
    fn recognises(&self, command: &[String]) -> bool;

    /// Why `command` cannot run under dbfork (an option dbfork replaces),
    /// as a usage error's text.
    fn refuse(&self, _command: &[String]) -> Option<String> {
        None
    }

    /// Options of `command` that do nothing under dbfork, each with whose
    /// they are (`pytest-django's --reuse-db`).
    fn ignored(&self, _command: &[String]) -> Vec<String> {
        Vec::new()
    }

    /// The workers speak dbfork's protocol: dbfork hands out the tests.
    fn speaks_protocol(&self) -> bool;

    /// The tool is configured once in a controller process first (through
    /// dbfork's Python packages), which may also build the template.
    fn has_controller(&self) -> bool {
        false
    }

    /// The workers start while the template is built, each waiting for its
    /// clone before its first test.
    fn starts_early(&self) -> bool {
        false
    }

    /// How tests are grouped when `--dist` is not given.
    fn default_dist(&self) -> Dist {
        Dist::Test
    }

    /// After how many failures the command line asks the run to stop (0:
    /// never).
    fn maxfail(&self, _command: &[String]) -> usize {
        0
    }

    /// Words added to the tool's command line (controller and workers).
    fn extra_args(&self) -> Vec<String> {
        Vec::new()
    }

    /// Writes the tool's support files under `dir`; returns the directory
    /// to put first on `PYTHONPATH`, if any.
    fn support_files(&self, _dir: &Path) -> io::Result<Option<PathBuf>> {
        Ok(None)
    }
}

/// The tool behind an adapter (`Auto` must be resolved first; it is taken
/// as `none`).
pub fn tool(adapter: Adapter) -> &'static dyn Tool {
    match adapter {
        Adapter::Pytest => &pytest::Pytest,
        Adapter::Django => &django::Django,
        Adapter::Protocol => &generic::Protocol,
        Adapter::Auto | Adapter::None => &generic::NoAdapter,
    }
}

/// What `--adapter auto` picks for `command`.
pub fn recognise(command: &[String]) -> Adapter {
    [Adapter::Pytest, Adapter::Django]
        .into_iter()
        .find(|a| tool(*a).recognises(command))
        .unwrap_or(Adapter::None)
}

/// The file name of a command's word (`/venv/bin/pytest` -> `pytest`).
fn base(word: &str) -> String {
    Path::new(word)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The first of `options` given in `command` (alone or as `--option=value`).
fn given<'a>(command: &'a [String], options: &[&str]) -> Option<&'a str> {
    command
        .iter()
        .find(|a| {
            options
                .iter()
                .any(|o| a.as_str() == *o || a.starts_with(&format!("{o}=")))
        })
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn v(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn auto_picks_the_tool_the_command_runs() {
        assert_eq!(recognise(&v(&["pytest", "-q"])), Adapter::Pytest);
        assert_eq!(recognise(&v(&["pytest", "-p", "no:dbfork"])), Adapter::None);
        assert_eq!(
            recognise(&v(&["python", "manage.py", "test"])),
            Adapter::Django
        );
        assert_eq!(recognise(&v(&["cargo", "nextest", "run"])), Adapter::None);
        for adapter in [Adapter::Pytest, Adapter::Django, Adapter::Protocol] {
            assert!(tool(adapter).speaks_protocol(), "{adapter:?}");
        }
        assert!(!tool(Adapter::None).speaks_protocol());
        assert!(
            tool(Adapter::Django).has_controller() && !tool(Adapter::Protocol).has_controller()
        );
        assert_eq!(tool(Adapter::Django).default_dist(), Dist::Class);
        assert!(tool(Adapter::Pytest).starts_early() && !tool(Adapter::Django).starts_early());
    }
}
