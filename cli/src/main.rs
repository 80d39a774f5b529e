//! `lambda`: one binary, one subcommand per role.
//!
//! The layers are libraries; this crate only parses flags (each also a
//! `LAMBDA_*` environment variable), sets up logging and shutdown, and wires
//! them together.

mod cmd;

use clap::{Parser, Subcommand};

/// Lambda: a reference implementation of the Lambda Architecture on Kafka.
///
/// Events arrive on a Kafka topic; a batch layer recomputes word counts from an
/// immutable master log, a speed layer counts what the newest batch view has
/// not absorbed yet, and a serving layer merges both, exactly, per query.
#[derive(Debug, Parser)]
#[command(name = "lambda", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything in one process: embedded Kafka-compatible broker, the three layers, sample producer.
    Demo(Box<cmd::demo::DemoArgs>),
    /// Run the embedded Kafka-compatible broker alone (SQLite storage).
    Broker(cmd::broker::BrokerArgs),
    /// Run the batch layer: master log, ingestion, periodic recompute, view publication.
    Batch(Box<batch_layer::config::BatchArgs>),
    /// Run the speed layer: incremental realtime counts, checkpoints, expiry at the batch cut.
    Speed(Box<speed_layer::config::SpeedArgs>),
    /// Run the serving layer: view replicas, realtime follower, the HTTP API and dashboard.
    Serve(Box<serving_layer::config::ServeArgs>),
    /// Produce one event per line of a file (or standard input) to Kafka.
    Produce(Box<cmd::produce::ProduceArgs>),
    /// Count words in a text file (one event per line) with the batch engine.
    Mapreduce(cmd::mapreduce::MapreduceArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    common::telemetry::init();
    match cli.command {
        Command::Demo(args) => cmd::demo::run(*args),
        Command::Broker(args) => cmd::broker::run(args),
        Command::Batch(args) => cmd::batch::run(*args),
        Command::Speed(args) => cmd::speed::run(*args),
        Command::Serve(args) => cmd::serve::run(*args),
        Command::Produce(args) => cmd::produce::run(*args),
        Command::Mapreduce(args) => cmd::mapreduce::run(args),
    }
}
