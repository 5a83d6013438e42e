//! keyhole's contract: the annotation keys users write, the typed spec they parse
//! into, the operator's store config, the names of everything keyhole injects, and
//! the plan the webhook hands to the injector.
//!
//! The webhook, the injector and the rotation controller all read annotations
//! through [`annotations::parse`] and build plans through [`plan::build`], so they
//! can never disagree on what an annotation means.
#![forbid(unsafe_code)]

pub mod access;
pub mod annotations;
pub mod config;
pub mod duration;
pub mod generate;
pub mod names;
pub mod plan;
pub mod reference;
pub mod reference_doc;
pub mod store;
pub mod workload;

pub use annotations::{InjectSpec, Output, Problem, Problems};
pub use plan::Plan;
pub use reference::Reference;
pub use store::{Store, StoreKind, Stores};
pub use workload::WorkloadKind;
