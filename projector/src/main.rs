//! `projector [serve|rebuild|migrate]`.

use platform::config::{self, CommonConfig};
use projector::startup::{self, ProjectorConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let common: CommonConfig = config::load()?;
    platform::telemetry::init_tracing(&common.log_format);
    match std::env::args().nth(1).as_deref() {
        None | Some("serve") => {
            startup::run(
                common,
                config::load::<ProjectorConfig>()?,
                platform::shutdown::on_signal(),
            )
            .await
        }
        Some("rebuild") => {
            platform::db::migrate(&common.database_url).await?;
            let applied = projector::rebuild::rebuild(&platform::db::pool(&common)?).await?;
            println!("rebuilt read models from {applied} events");
            Ok(())
        }
        Some("migrate") => platform::db::migrate(&common.database_url).await,
        Some(other) => {
            anyhow::bail!("unknown subcommand `{other}` (expected serve, rebuild or migrate)")
        }
    }
}
