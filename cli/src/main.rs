//! `lambda`: one binary, one subcommand per role.
//!
//! The layers are libraries; this crate only parses flags (each also a
//! `LAMBDA_*` environment variable), sets up logging and shutdown, and wires
//! them together.
//!
//! # Layout
//!
//! - this file: the subcommands;
//! - `cmd`: one module per subcommand (`demo`, `broker`, `batch`, `speed`,
//!   `serve`, `produce`, `mapreduce`, `replay`) and the shared role runner;
//! - `tests/`: the whole-stack tests (the only crate that sees every layer):
//!   end to end (`e2e`) and the reliability suite (`system/`) on one harness
//!   (`common/stack.rs`: the layers as processes), two layers in-process
//!   (`handoff`), processes killed and restarted (`*_crash`), and failures
//!   that stop a role (`failures`).

mod cmd;

use clap::{Parser, Subcommand};

/// mimalloc rather than the system allocator: the speed layer allocates a
/// key per new word and frees whole micro-batches at a time, which glibc's
/// malloc spent about a quarter of the layer's CPU on (`perf`, README
/// "Speed layer vs a plain consumer").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Reprocess the events topic from its start the Kappa way (a speed layer
    /// into a fresh store), compare with the batch view, then run on.
    Replay(Box<cmd::replay::ReplayArgs>),
}

fn main() -> anyhow::Result<()> {
    // First: it applies to memory mapped before it too, but the sooner the
    // fewer huge pages were zeroed for nothing.
    let huge_pages = common::memory::avoid_transparent_huge_pages();
    let cli = Cli::parse();
    common::telemetry::init();
    match huge_pages {
        Ok(outcome) => tracing::debug!(?outcome, "Transparent huge pages."),
        Err(error) => tracing::warn!(
            %error,
            "Cannot turn transparent huge pages off for this process; it runs, but slower."
        ),
    }
    match cli.command {
        Command::Demo(args) => cmd::demo::run(*args),
        Command::Broker(args) => cmd::broker::run(args),
        Command::Batch(args) => cmd::batch::run(*args),
        Command::Speed(args) => cmd::speed::run(*args),
        Command::Serve(args) => cmd::serve::run(*args),
        Command::Produce(args) => cmd::produce::run(*args),
        Command::Mapreduce(args) => cmd::mapreduce::run(args),
        Command::Replay(args) => cmd::replay::run(*args),
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// One name per setting: every flag of every role reads the variable
    /// named after it (`--recompute-interval` ↔ `LAMBDA_RECOMPUTE_INTERVAL`),
    /// a repeatable flag the plural (`--kafka-option` ↔ `LAMBDA_KAFKA_OPTIONS`),
    /// and only hidden test hooks have none.
    #[test]
    fn every_flag_of_every_role_reads_the_variable_named_after_it() {
        let cli = Cli::command();
        let (mut checked, mut wrong) = (0, Vec::new());
        // `mapreduce` is a one-shot tool over a file, not a role: flags only.
        for sub in cli
            .get_subcommands()
            .filter(|s| s.get_name() != "mapreduce")
        {
            for arg in sub.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if matches!(long, "help" | "version") {
                    continue;
                }
                let mut expected = format!("LAMBDA_{}", long.to_uppercase().replace('-', "_"));
                if matches!(arg.get_action(), clap::ArgAction::Append) {
                    expected.push('S');
                }
                let var = arg.get_env().and_then(|v| v.to_str());
                let role = sub.get_name();
                match var {
                    Some(var) if var != expected => wrong.push(format!(
                        "`lambda {role} --{long}` reads {var}, not {expected}"
                    )),
                    None if !arg.is_hide_set() => {
                        wrong.push(format!("`lambda {role} --{long}` reads no variable"))
                    }
                    _ => {}
                }
                checked += 1;
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        assert!(checked > 60, "only {checked} flags seen");
    }
}
