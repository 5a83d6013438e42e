//! Runs end-to-end tests against one shared bed: the bed starts once on the main
//! thread, each test gets it by reference and works in namespaces of its own, and
//! the bed stops before the process exits, whatever the tests did.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Result;
use libtest_mimic::{Arguments, Failed, Trial};

use crate::{Bed, install};

pub type TestFn = for<'a> fn(&'a Bed) -> Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;

/// `tests: [(name, fn)]`, in parallel. Prints the libtest summary line CI reads.
pub fn run(tests: Vec<(&'static str, TestFn)>) -> ! {
    run_with(Arguments::from_args(), tests, Node::None)
}

/// Which bed: without a node, with one, with one and keyhole installed on it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Node {
    None,
    Bare,
    Installed,
}

/// Like [`run`], on a bed with a real node and nothing of keyhole's on it (the
/// tests install it themselves); one test at a time in the order given.
pub fn run_on_node(tests: Vec<(&'static str, TestFn)>) -> ! {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    run_with(args, tests, Node::Bare)
}

/// Like [`run`], on a bed with a real node ([`Bed::start_with_node`]) and keyhole
/// installed on it from `manifests/` ([`Bed::install_keyhole`]); one test at a
/// time in the order given, as the last ones take keyhole or the backends down.
pub fn run_on_node_installed(tests: Vec<(&'static str, TestFn)>) -> ! {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    run_with(args, tests, Node::Installed)
}

/// Like [`run`], one test at a time in the order given: for a binary whose last
/// test takes parts of the bed down.
pub fn run_in_order(tests: Vec<(&'static str, TestFn)>) -> ! {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    run_with(args, tests, Node::None)
}

fn run_with(args: Arguments, tests: Vec<(&'static str, TestFn)>, node: Node) -> ! {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");

    // Nothing to run (filtered out, or --list): don't pay for a bed.
    let selected = tests.iter().any(|(name, _)| args.filter.as_deref().is_none_or(|f| name.contains(f)));
    if args.list || !selected {
        let trials = tests.into_iter().map(|(name, _)| Trial::test(name, || Ok(()))).collect();
        libtest_mimic::run(&args, trials).exit();
    }

    let start = if node == Node::Bare {
        rt.block_on(Bed::start_with_node()).map(|bed| (bed, None))
    } else if node == Node::Installed {
        rt.block_on(async {
            let mut bed = Bed::start_with_node().await?;
            let t0 = std::time::Instant::now();
            let installed = bed
                .install_keyhole(&bed.node_config_yaml(
                    &[("rotationRole", install::VAULT_ROTATION_ROLE)],
                    &[("rotationRole", "arn:aws:iam::123456789012:role/keyhole-rotation")],
                )?)
                .await?;
            bed.installed = Some(installed);
            Ok::<_, anyhow::Error>((bed, Some(t0.elapsed())))
        })
    } else {
        rt.block_on(Bed::start()).map(|bed| (bed, None))
    };
    let (bed, installed_in) = match start {
        Ok((bed, installed_in)) => (Arc::new(bed), installed_in),
        Err(e) => {
            eprintln!("keyhole-bed: the test bed did not start: {e:#}");
            std::process::exit(1);
        }
    };
    eprintln!(
        "keyhole-bed: Kubernetes {} up with OpenBao and moto in {:.1}s",
        bed.k8s_version,
        bed.started_in.as_secs_f64()
    );
    if let Some(node) = &bed.node {
        eprintln!(
            "keyhole-bed: node {} Ready in {:.1}s (kubelet, containerd, CNI); images: {}",
            node.name,
            node.started_in.as_secs_f64(),
            node.images
                .iter()
                .map(|i| format!("{} {:.1} MB", i.name, i.layer_bytes as f64 / 1e6))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(t) = installed_in {
        eprintln!("keyhole-bed: keyhole installed from manifests/ in {:.1}s", t.as_secs_f64());
    }

    let handle = rt.handle().clone();
    let trials = tests
        .into_iter()
        .map(|(name, f)| {
            let bed = bed.clone();
            let handle = handle.clone();
            Trial::test(name, move || handle.block_on(f(&bed)).map_err(|e| Failed::from(format!("{e:#}"))))
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);

    let keep = conclusion.has_failed() && std::env::var_os("CI").is_none();
    match Arc::try_unwrap(bed) {
        Ok(mut bed) => bed.stop(keep || std::env::var_os("KEYHOLE_KEEP_BED").is_some()),
        Err(_) => eprintln!("keyhole-bed: a test still holds the bed; its processes die with this one"),
    }
    drop(rt);
    conclusion.exit()
}

/// Boxes an async test function for [`run`].
#[macro_export]
macro_rules! e2e_tests {
    ($($name:ident),* $(,)?) => {
        vec![$(
            (stringify!($name), (|bed| Box::pin($name(bed))) as $crate::harness::TestFn),
        )*]
    };
}
