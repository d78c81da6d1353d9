//! `opta-lmx-worker`: the per-model process. The controller starts it; people may run its
//! diagnostic subcommands by hand.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "opta-lmx-worker", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load a model folder's weights with MLX and print parameter counts and storage per
    /// tensor group.
    Inspect {
        /// An MLX model folder (config.json + *.safetensors)
        model: PathBuf,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Inspect { model, json } => match opta_lmx_worker::inspect::summarise(&model) {
            Ok(summary) if json => match serde_json::to_string_pretty(&summary) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            },
            Ok(summary) => {
                print!("{}", opta_lmx_worker::inspect::render(&summary));
                ExitCode::SUCCESS
            }
            Err(e) => fail(&format!("{e:#}")),
        },
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("opta-lmx-worker: {e}");
    ExitCode::FAILURE
}
