pub mod batch;
pub mod demo;
pub mod mapreduce;
pub mod speed;

/// A multi-threaded tokio runtime for a role.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}
