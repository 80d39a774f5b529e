//! `lambda batch`: the batch layer as its own process.

use batch_layer::config::BatchArgs;

pub fn run(args: BatchArgs) -> anyhow::Result<()> {
    let data_dir = args.node.data_dir.clone();
    super::run_role("batch", &data_dir, |token| async move {
        batch_layer::start(args, token).await?.wait().await?;
        Ok::<_, batch_layer::BatchError>(())
    })
}
