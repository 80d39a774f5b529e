//! `lambda serve`: the serving layer (HTTP API and dashboard) as its own process.

use serving_layer::config::ServeArgs;

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let data_dir = args.node.data_dir.clone();
    super::run_role("serving", &data_dir, |token| async move {
        serving_layer::start(args, token).await?.wait().await?;
        Ok::<_, serving_layer::ServeError>(())
    })
}
