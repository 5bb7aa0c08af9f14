//! `crm-pipeline`: the pipeline service alone.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = crm_platform::process::config_path_from_args(std::env::args())?;
    let config = crm_platform::config::Config::load(path.as_deref())?;
    let mut plan = crm_platform::server::ServicePlan::new();
    plan.add(crm_pipeline::SERVICE_NAME, crm_pipeline::role_table());
    crm_platform::process::run(config, "crm-pipeline", plan, |config, keys| async move {
        let mut services = crm_platform::server::ServiceSet::new();
        crm_pipeline::add_to(&mut services, &config, &keys).await?;
        Ok(services)
    })
    .await
}
