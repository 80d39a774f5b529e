//! What the speed layer's integration tests share: its flags as a parser,
//! and the flags every test starts it with.

use clap::Parser;

#[derive(Parser)]
pub struct SpeedCli {
    #[command(flatten)]
    pub args: speed_layer::config::SpeedArgs,
}

/// Flags for a speed layer on its own topics and data directory: three
/// partitions, buckets of 8, events of at most 500 bytes.
pub fn common_flags<'a>(
    brokers: &'a str,
    topic: &'a str,
    dlq: &'a str,
    rt: &'a str,
    dir: &'a str,
) -> Vec<&'a str> {
    vec![
        "x",
        "--brokers",
        brokers,
        "--topic",
        topic,
        "--dead-letter-topic",
        dlq,
        "--realtime-topic",
        rt,
        "--data-dir",
        dir,
        "--http-addr",
        "127.0.0.1:0",
        "--partitions",
        "3",
        "--max-event-bytes",
        "500",
        "--bucket-size",
        "8",
    ]
}
