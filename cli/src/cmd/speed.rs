//! `lambda speed`: the speed layer as its own process.

use anyhow::Context;
use speed_layer::config::SpeedArgs;

pub fn run(args: SpeedArgs) -> anyhow::Result<()> {
    super::runtime()?.block_on(async move {
        let token = common::shutdown::on_signals();
        let data_dir = args.node.data_dir.clone();
        let running = speed_layer::start(args, token).await.with_context(|| {
            format!(
                "cannot start the speed layer (data dir {})",
                data_dir.display()
            )
        })?;
        running.wait().await;
        Ok(())
    })
}
