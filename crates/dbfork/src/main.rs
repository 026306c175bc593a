//! The `dbfork` command line: parses flags and hands over to the commands.

mod cli;
mod commands;
mod errors;
mod settings;
mod signals;
mod target;

fn main() {
    // Started as dbfork's reaper: that work only (see dbfork_engine::reaper).
    dbfork_engine::reaper::main_if_reaper();
    signals::catch_early();
    // Before any thread: the key leaves the environment no child inherits.
    dbfork_engine::cache::take_key_from_env();
    dbfork_engine::reaper::enable();
    std::process::exit(commands::main());
}
