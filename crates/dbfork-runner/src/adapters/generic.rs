//! Commands dbfork has no adapter of its own for: one that speaks the worker
//! protocol itself (`--adapter protocol`: an adapter in another language,
//! tested with conformance/harness.py), and any other command, run once per
//! slot on its own clone (`--adapter none`).

use super::Tool;

/// `--adapter protocol`.
pub struct Protocol;

impl Tool for Protocol {
    /// Never picked by `auto`: nothing in a command line says it.
    fn recognises(&self, _command: &[String]) -> bool {
        false
    }

    fn speaks_protocol(&self) -> bool {
        true
    }
}

/// `--adapter none`: the command runs once per slot and splits its own work.
pub struct NoAdapter;

impl Tool for NoAdapter {
    fn recognises(&self, _command: &[String]) -> bool {
        false
    }

    fn speaks_protocol(&self) -> bool {
        false
    }
}
