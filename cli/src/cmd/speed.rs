//! `lambda speed`: the speed layer as its own process.

use speed_layer::config::SpeedArgs;

pub fn run(args: SpeedArgs) -> anyhow::Result<()> {
    let data_dir = args.node.data_dir.clone();
    super::run_role("speed", &data_dir, |token| async move {
        speed_layer::start(args, token).await?.wait().await?;
        Ok::<_, speed_layer::SpeedError>(())
    })
}
