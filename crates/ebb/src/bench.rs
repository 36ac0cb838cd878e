//! `ebb bench`. BEING WRITTEN.
#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// CPU and RSS of `ebb run` watching many test-driver domains.
    Overhead,
}
pub async fn run(_b: BenchCommand) -> Result<(), String> {
    Err("not yet".into())
}
