//! keyhole-injector: see the README.
#![forbid(unsafe_code)]
