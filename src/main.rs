//! The `wstream` command line.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    wstream::process::keep_freed_heap();
    wstream::process::exit_on_interrupt();
    cli::run()
}
