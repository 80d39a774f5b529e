//! `lambda`: one binary, one subcommand per role.
//!
//! The layers are libraries; this crate only parses flags (each also a
//! `LAMBDA_*` environment variable), sets up logging and shutdown, and wires
//! them together.

use clap::Parser;

/// Lambda: a reference implementation of the Lambda Architecture on Kafka.
///
/// Events arrive on a Kafka topic; a batch layer recomputes word counts from an
/// immutable master log, a speed layer counts what the newest batch view has
/// not absorbed yet, and a serving layer merges both, exactly, per query.
#[derive(Debug, Parser)]
#[command(name = "lambda", version, about, long_about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    common::telemetry::init();
    Ok(())
}
