//! `keyhole`: the operator CLI, and the multi-call binary of the image.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use keyhole_contract::config::Config;

/// mimalloc: the webhook's allocator (see keyhole-webhook's main).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// keyhole: secrets from external secret managers into pods.
#[derive(Parser)]
#[command(name = "keyhole", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the pods of a manifest as the webhook would patch them (or the denial).
    Render {
        /// The operator's config (injector image, stores).
        #[arg(long, env = "KEYHOLE_CONFIG")]
        config: PathBuf,
        /// A manifest file; `-` or nothing for stdin.
        file: Option<PathBuf>,
        /// Print the files the templates (keyhole.dev/template-*) would make,
        /// rendered with sample values (`sample-<name>`), instead of the pods.
        /// Nothing is fetched.
        #[arg(long)]
        sample_values: bool,
    },
    /// Roll one workload now, with the rotation controller's own patch.
    Roll(keyhole_rotation::RollArgs),
    /// Run the admission webhook (as `keyhole-webhook`).
    Webhook(keyhole_webhook::Cli),
    /// Run the init container's job (as `keyhole-injector`).
    Injector(keyhole_injector::Args),
    /// Run the rotation controller (as `keyhole-rotation`).
    Rotation(keyhole_rotation::Cli),
}

fn main() -> ExitCode {
    // Called through a link named like one of the job binaries (as the image
    // ships it), it is that binary, flags and all.
    let argv0 = std::env::args_os().next().map(PathBuf::from);
    let outcome = match argv0.as_deref().and_then(|p| p.file_name()).and_then(|n| n.to_str()) {
        Some("keyhole-webhook") => keyhole_webhook::Cli::parse().main(),
        Some("keyhole-rotation") => keyhole_rotation::Cli::parse().main(),
        Some("keyhole-injector") => return keyhole_injector::main(keyhole_injector::Args::parse()),
        _ => subcommand(Cli::parse().command),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyhole: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn subcommand(command: Command) -> Result<()> {
    match command {
        Command::Render { config, file, sample_values } => render(&config, file, sample_values),
        Command::Roll(args) => args.main(),
        Command::Webhook(cli) => cli.main(),
        Command::Rotation(cli) => cli.main(),
        Command::Injector(args) => match keyhole_injector::main(args) {
            code if code == ExitCode::SUCCESS => Ok(()),
            // The injector has already said why, in its log and termination message.
            _ => std::process::exit(1),
        },
    }
}

/// Exit 1 with every denial on stderr when any object is refused.
fn render(config: &std::path::Path, file: Option<PathBuf>, sample_values: bool) -> Result<()> {
    let config = Config::load(config)?;
    let text = match file.filter(|f| f.as_os_str() != "-") {
        Some(f) => std::fs::read_to_string(&f).with_context(|| format!("read {}", f.display()))?,
        None => std::io::read_to_string(std::io::stdin())?,
    };
    use keyhole_cli::render::{Show, render_as};
    let show = if sample_values { Show::SampleFiles } else { Show::Pods };
    match render_as(&config, &text, show) {
        Ok(out) => {
            print!("{out}");
            Ok(())
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            std::process::exit(1);
        }
    }
}
