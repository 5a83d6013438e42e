//! `keyhole-bed up`: start the test bed and keep it up until Ctrl-C, printing how
//! to reach each part. `keyhole-bed demo`: keyhole's main job, end to end.
use anyhow::{Result, bail};
use keyhole_testbed::Bed;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let cmd = std::env::args().nth(1).unwrap_or_else(|| "up".into());
    match cmd.as_str() {
        "up" => up().await,
        "demo" => keyhole_testbed::demo::run().await,
        other => bail!("usage: keyhole-bed up|demo (not {other:?})"),
    }
}

async fn up() -> Result<()> {
    let bed = Bed::start().await?;
    print_bed(&bed);
    println!("Ctrl-C stops every part.");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

pub fn print_bed(bed: &Bed) {
    println!(
        "Kubernetes {} ({}) up with OpenBao and moto in {:.1}s",
        bed.k8s_version,
        bed.api_url,
        bed.started_in.as_secs_f64()
    );
    println!("  export KUBECONFIG={}", bed.kubeconfig.display());
    println!("  export VAULT_ADDR={} VAULT_TOKEN={}", bed.vault_addr, keyhole_testbed::VAULT_ROOT_TOKEN);
    println!("  export AWS_ENDPOINT_URL={} AWS_REGION=us-east-1", bed.moto_url);
    for (name, pid) in bed.pids() {
        println!("  {name:<24} pid {pid}");
    }
}
