//! `command-service [serve|migrate]`: serve the write API (default), or apply migrations and exit.

use command_service::config::CommandConfig;
use command_service::startup::Application;
use identity::AuthConfig;
use platform::config::{self, CommonConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let common: CommonConfig = config::load()?;
    platform::telemetry::init_tracing(&common.log_format);
    match std::env::args().nth(1).as_deref() {
        None | Some("serve") => {
            let app = Application::build(
                common,
                config::load::<AuthConfig>()?,
                config::load::<CommandConfig>()?,
                platform::shutdown::on_signal(),
            )
            .await?;
            app.run_until_stopped().await
        }
        Some("migrate") => platform::db::migrate(&common.database_url).await,
        Some(other) => anyhow::bail!("unknown subcommand `{other}` (expected serve or migrate)"),
    }
}
