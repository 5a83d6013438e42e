//! keyhole-webhook: see the README.
#![forbid(unsafe_code)]
