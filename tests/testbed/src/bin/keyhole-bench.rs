//! `make bench`: prints the figures the issues ask for. Run from a release build
//! (`make bench` builds one), on a machine as quiet as you can get it.
use anyhow::Result;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    keyhole_testbed::install_crypto();
    let only = std::env::args().nth(1);
    if only.as_deref().is_none_or(|o| o == "webhook") {
        // The webhook bench needs no backend: stores are only named in the plan.
        let config = "injector: {image: ghcr.io/keyhole/keyhole:0.1.0}\ndefaultStore: vault\nstores:\n  vault: {kind: vault, address: 'https://vault:8200', auth: {method: kubernetes}}\n";
        keyhole_testbed::bench::webhook(config).await?;
    }
    if only.as_deref().is_none_or(|o| o == "rotation") {
        let bed = keyhole_testbed::Bed::start().await?;
        keyhole_testbed::bench_rotation::rotation(&bed).await?;
    }
    Ok(())
}
