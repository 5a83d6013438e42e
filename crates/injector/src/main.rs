//! keyhole-injector: parse the flags, run the plan.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    keyhole_injector::main(keyhole_injector::Args::parse())
}
