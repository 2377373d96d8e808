//! `command-service [serve|migrate|rewrap-keys]`: serve the write API (default), apply
//! migrations, or re-wrap provider keys under a new key-encryption key, and exit.

use command_service::config::CommandConfig;
use command_service::startup::Application;
use identity::AuthConfig;
use platform::config::{self, CommonConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let common: CommonConfig = config::load()?;
    let _telemetry = platform::telemetry::init_tracing(&common.log_format, "command-service");
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
        Some("rewrap-keys") => {
            // After adding a key-encryption key (OC_PROVIDER_KEKS, OC_PROVIDER_KEK_ID): wrap
            // every provider key's data key under it; then the old one can be removed.
            let keks = config::load::<identity::ProviderKeysConfig>()?.keks()?;
            let db = platform::db::pool(&common)?.get().await?;
            let n = identity::credentials::store::rewrap_all(&db, &keks).await?;
            println!("re-wrapped {n} provider keys under the active key-encryption key");
            Ok(())
        }
        Some(other) => {
            anyhow::bail!("unknown subcommand `{other}` (expected serve, migrate or rewrap-keys)")
        }
    }
}
