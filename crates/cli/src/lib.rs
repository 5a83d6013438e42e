//! keyhole's operator CLI: `render` (a manifest's pods as the webhook would
//! patch them) and `roll` (a workload now). The same binary is the one the image
//! ships: `keyhole webhook`, `keyhole injector` and `keyhole rotation` run the
//! servers and the init container, with the very flags of their own binaries.
#![forbid(unsafe_code)]

pub mod render;
