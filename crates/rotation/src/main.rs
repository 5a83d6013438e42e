//! keyhole-rotation: parse the flags, load the config, run the controller.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> anyhow::Result<()> {
    keyhole_rotation::Cli::parse().main()
}
