//! `make bench`: prints the figures the issues ask for. Run from a release build
//! (`make bench` builds one), on a machine as quiet as you can get it.
use anyhow::Result;

/// The webhook benches need no backend: stores are only named in the plan.
const CONFIG: &str = "injector: {image: ghcr.io/keyhole/keyhole:0.1.0}\ndefaultStore: vault\nstores:\n  vault: {kind: vault, address: 'https://vault:8200', auth: {method: kubernetes}}\n";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    keyhole_testbed::install_crypto();
    let only = std::env::args().nth(1);
    if only.as_deref().is_none_or(|o| o == "webhook") {
        keyhole_testbed::bench::webhook(CONFIG).await?;
    }
    if only.as_deref().is_none_or(|o| o == "hostile") {
        let secs = std::env::var("KEYHOLE_HOSTILE_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
        keyhole_testbed::bench::hostile(CONFIG, secs).await?;
    }
    if only.as_deref().is_none_or(|o| o == "rotation") {
        let bed = keyhole_testbed::Bed::start().await?;
        keyhole_testbed::bench_rotation::rotation(&bed).await?;
    }
    Ok(())
}
