//! keyhole-injector: parse the flags, pick the crypto provider, run the plan.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use keyhole_injector::Args;

fn main() -> ExitCode {
    let args = Args::parse();
    args.init_logging();
    // One crypto provider for every TLS client, chosen here rather than by features.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("keyhole-injector: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `Ok(false)`: the run failed and has already reported why.
fn run(args: Args) -> anyhow::Result<bool> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("start the async runtime")?;
    Ok(rt.block_on(args.run()).is_ok())
}
