//! `llm-worker`: answer prompts until SIGTERM, finishing the replies in hand.

use llm_worker::config::WorkerConfig;
use platform::config::{self, CommonConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let common: CommonConfig = config::load()?;
    let _telemetry = platform::telemetry::init_tracing(&common.log_format, "llm-worker");
    let cfg: WorkerConfig = config::load()?;
    llm_worker::startup::run(common, cfg, platform::shutdown::on_signal()).await
}
