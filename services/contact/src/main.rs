//! `crm-contact`: the contact service alone.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = crm_platform::process::config_path_from_args(std::env::args())?;
    let config = crm_platform::config::Config::load(path.as_deref())?;
    crm_platform::process::run(config, "crm-contact", |config, keys| async move {
        let mut services = crm_platform::server::ServiceSet::new();
        crm_contact::add_to(&mut services, &config, &keys).await?;
        Ok(services)
    })
    .await
}
