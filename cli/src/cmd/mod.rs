pub mod batch;
pub mod broker;
pub mod demo;
pub mod mapreduce;
pub mod produce;
pub mod replay;
pub mod serve;
pub mod speed;

use anyhow::Context;
use common::shutdown::CancellationToken;
use std::future::Future;
use std::path::Path;

/// A multi-threaded tokio runtime for a role.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}

/// Runs one role until ctrl-c or SIGTERM: `run` starts it with the shutdown
/// token and waits for it to stop. A role that cannot start, or whose
/// component fails while it runs, ends here with an error: `main` prints it
/// with its causes and the process exits non-zero.
pub fn run_role<F, E>(
    role: &str,
    data_dir: &Path,
    run: impl FnOnce(CancellationToken) -> F,
) -> anyhow::Result<()>
where
    F: Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    runtime()?.block_on(async move {
        let token = common::shutdown::on_signals();
        run(token).await.with_context(|| {
            format!(
                "the {role} layer stopped on a failure (data dir {})",
                data_dir.display()
            )
        })
    })
}
