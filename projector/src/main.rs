//! `projector [serve|rebuild|parked|migrate]`: `parked` lists the events skipped as unprojectable.

use platform::config::{self, CommonConfig};
use projector::startup::{self, ProjectorConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let common: CommonConfig = config::load()?;
    let _telemetry = platform::telemetry::init_tracing(&common.log_format, "projector");
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
            let done =
                projector::rebuild::rebuild(&platform::db::keyed_batch_pool(&common)?).await?;
            println!("rebuilt read models from {} events; parked {}", done.applied, done.parked);
            if done.parked > 0 {
                println!("parked events are listed by `projector parked`");
            }
            Ok(())
        }
        Some("parked") => {
            let client = platform::db::pool(&common)?.get().await?;
            for row in client
                .query(
                    "SELECT stage, event_id, parked_at::text, attempts, reason FROM parked_events \
                     ORDER BY parked_at",
                    &[],
                )
                .await?
            {
                let (stage, id, at, attempts, reason): (String, String, String, i32, String) =
                    (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
                println!("{at}\t{stage}\t{id}\t{attempts} attempts\t{reason}");
            }
            Ok(())
        }
        Some("migrate") => platform::db::migrate(&common.database_url).await,
        Some(other) => {
            anyhow::bail!(
                "unknown subcommand `{other}` (expected serve, rebuild, parked or migrate)"
            )
        }
    }
}
