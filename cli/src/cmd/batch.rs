//! `lambda batch`: the batch layer as its own process.

use anyhow::Context;
use batch_layer::config::BatchArgs;

pub fn run(args: BatchArgs) -> anyhow::Result<()> {
    super::runtime()?.block_on(async move {
        let token = common::shutdown::on_signals();
        let data_dir = args.node.data_dir.clone();
        let running = batch_layer::start(args, token).await.with_context(|| {
            format!(
                "cannot start the batch layer (data dir {})",
                data_dir.display()
            )
        })?;
        running.wait().await;
        Ok(())
    })
}
