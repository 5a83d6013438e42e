//! `make demo`: keyhole's main job on the local control plane.
use anyhow::Result;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};

use crate::Bed;

pub async fn run() -> Result<()> {
    let bed = Bed::start().await?;
    println!(
        "== keyhole demo: Kubernetes {} up with OpenBao and moto in {:.1}s",
        bed.k8s_version,
        bed.started_in.as_secs_f64()
    );
    let namespaces = Api::<Namespace>::all(bed.client.clone()).list(&ListParams::default()).await?;
    for ns in namespaces.items {
        println!("   namespace {}", ns.metadata.name.unwrap_or_default());
    }
    println!("== done; every part stops now");
    Ok(())
}
