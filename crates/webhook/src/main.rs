//! keyhole-webhook: parse the flags, load the config, serve.
#![forbid(unsafe_code)]

use anyhow::Result;
use clap::Parser;

/// mimalloc rather than glibc's malloc: a review allocates many small strings on
/// two threads, and glibc's arenas cost about a tenth of a review's CPU here.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    keyhole_webhook::Cli::parse().main()
}
