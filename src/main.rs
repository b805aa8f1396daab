//! The `wstream` command line.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    wstream::residency::keep_freed_heap();
    cli::run()
}
