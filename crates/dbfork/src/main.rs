//! The `dbfork` command line: parses flags and hands over to the commands.

mod cli;
mod commands;
mod errors;
mod settings;
mod signals;
mod target;

fn main() {
    std::process::exit(commands::main());
}
