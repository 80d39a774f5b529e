//! `lambda broker`: the embedded Kafka-compatible broker (tansu, SQLite
//! storage) as its own process, for running the layers as separate processes
//! without a Kafka install (tests, benchmarks, a laptop).

use anyhow::Context;
use clap::Args;
use common::broker::{BrokerStorage, EmbeddedBroker};
use common::config::env;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// The listen (and advertised) address.
    #[arg(long, env = env::BROKER_ADDR, default_value = "127.0.0.1:9092")]
    pub broker_addr: SocketAddr,
    /// Where the broker keeps its log (`tansu.db`, SQLite); a restart resumes it.
    #[arg(long, env = env::DATA_DIR, default_value = "./lambda-broker")]
    pub data_dir: PathBuf,
}

pub fn run(args: BrokerArgs) -> anyhow::Result<()> {
    super::runtime()?.block_on(async move {
        let token = common::shutdown::on_signals();
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
        let db = args.data_dir.join("tansu.db");
        let broker = EmbeddedBroker::start_on(args.broker_addr, BrokerStorage::Sqlite(db))
            .await
            .with_context(|| format!("cannot start the embedded broker on {}", args.broker_addr))?;
        println!(
            "Kafka-compatible broker listening on {}",
            broker.bootstrap()
        );
        token.cancelled().await;
        broker.stop().await;
        Ok(())
    })
}
