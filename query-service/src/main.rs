//! `query-service`: serve reads and event streams until SIGTERM.

use identity::{AuthConfig, LoginConfig};
use platform::config::{self, CommonConfig};
use query_service::config::QueryConfig;
use query_service::startup::Application;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let common: CommonConfig = config::load()?;
    let _telemetry = platform::telemetry::init_tracing(&common.log_format, "query-service");
    let app = Application::build(
        common,
        config::load::<AuthConfig>()?,
        config::load::<QueryConfig>()?,
        config::load::<LoginConfig>()?,
        platform::shutdown::on_signal(),
    )
    .await?;
    app.run_until_stopped().await
}
