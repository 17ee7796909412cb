//! What the file-backed drivers ([`crate::vfs`], [`crate::image`]) share:
//! the directories under their root and the blocking pool (`layout`), the
//! metadata files beside their data (`meta`), one `VolumeDriver` over a
//! per-driver `FileStore` (`store`), and file operations with crash
//! guarantees ([`durable`]), whose directory syncs concurrent callers share
//! (`dirsync`).

pub(crate) mod dirsync;
pub mod durable;
pub(crate) mod layout;
pub(crate) mod meta;
pub(crate) mod store;
