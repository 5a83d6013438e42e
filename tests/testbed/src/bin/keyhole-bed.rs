//! `keyhole-bed up [--node]`: start the test bed (with a real node) and keep it up
//! until Ctrl-C, printing how to reach each part. `keyhole-bed demo`: keyhole's
//! main job, end to end.
use anyhow::{Result, bail};
use keyhole_testbed::Bed;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let cmd = std::env::args().nth(1).unwrap_or_else(|| "up".into());
    match cmd.as_str() {
        "up" => up().await,
        "demo" => keyhole_testbed::demo::run().await,
        other => bail!("usage: keyhole-bed up [--node] | demo (not {other:?})"),
    }
}

async fn up() -> Result<()> {
    let with_node = std::env::args().nth(2).as_deref() == Some("--node");
    let bed = if with_node { Bed::start_with_node().await? } else { Bed::start().await? };
    print_bed(&bed);
    if let Some(node) = &bed.node {
        println!(
            "  node {} Ready in {:.1}s; dir {} cgroup-root {}",
            node.name,
            node.started_in.as_secs_f64(),
            bed.dir.display(),
            node.cgroup_root
        );
    }
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
