//! Whether a driver's storage is shared between controllers.
//!
//! With records in etcd, every controller may serve every volume, so every
//! controller must see the same storage: a `vfs` root on a local disk holds
//! only the volumes created through this host's controller, and the others
//! would answer for volumes they cannot reach. `berthd` cannot prove a
//! filesystem is shared, but it can tell the usual local ones (ext4, xfs,
//! btrfs, tmpfs, overlay, ...) from network and cluster filesystems by the
//! filesystem type `statfs` reports, and warns at start.

use std::path::{Path, PathBuf};

use crate::config::ServiceConfig;

/// Filesystem types (`statfs` `f_type`) of network and cluster
/// filesystems several hosts can mount: NFS, SMB/CIFS, CephFS, GlusterFS
/// and other FUSE filesystems, GFS2, OCFS2, Lustre, AFS, 9p, GPFS,
/// OrangeFS, BeeGFS.
const SHARED_TYPES: [(u64, &str); 14] = [
    (0x6969, "nfs"),
    (0x517B, "smb"),
    (0xFF53_4D42, "cifs"),
    (0xFE53_4D42, "smb2"),
    (0x00C3_6400, "ceph"),
    (0x6573_5546, "fuse"),
    (0x0116_1970, "gfs2"),
    (0x7461_636F, "ocfs2"),
    (0x0BD0_0BD0, "lustre"),
    (0x5346_414F, "afs"),
    (0x0102_1997, "9p"),
    (0x4750_4653, "gpfs"),
    (0x2003_0528, "orangefs"),
    (0x1983_0326, "beegfs"),
];

/// What `statfs` says of the filesystem holding a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sharing {
    /// A network or cluster filesystem (its type's name).
    Shared(&'static str),
    /// Any other filesystem: local to this host (its `f_type`, in hex).
    Local(u64),
    /// Not known (not Linux, or `statfs` failed).
    Unknown,
}

/// The sharing of the filesystem holding `path` (or, when `path` does not
/// exist yet, its nearest existing ancestor).
pub fn sharing(path: &Path) -> Sharing {
    let mut at = Some(path);
    while let Some(p) = at {
        if p.exists() {
            return statfs_sharing(p);
        }
        at = p.parent();
    }
    Sharing::Unknown
}

#[cfg(target_os = "linux")]
fn statfs_sharing(path: &Path) -> Sharing {
    match rustix::fs::statfs(path) {
        // `f_type` is a signed or unsigned word by platform; the magic
        // numbers are 32-bit.
        Ok(stat) => {
            #[allow(clippy::unnecessary_cast)]
            let kind = (stat.f_type as u64) & 0xFFFF_FFFF;
            match SHARED_TYPES.iter().find(|(magic, _)| *magic == kind) {
                Some((_, name)) => Sharing::Shared(name),
                None => Sharing::Local(kind),
            }
        }
        Err(_) => Sharing::Unknown,
    }
}

#[cfg(not(target_os = "linux"))]
fn statfs_sharing(_path: &Path) -> Sharing {
    Sharing::Unknown
}

/// The `vfs` services among `services` whose root is on a local
/// filesystem: (service, root, `f_type`).
pub fn local_vfs_roots(services: &[ServiceConfig]) -> Vec<(String, PathBuf, u64)> {
    services
        .iter()
        .filter(|s| s.driver == berth_drivers::vfs::DRIVER_NAME)
        .filter_map(|s| {
            let root = PathBuf::from(s.options.get("root")?.as_str()?);
            match sharing(&root) {
                Sharing::Local(kind) => Some((s.name.clone(), root, kind)),
                Sharing::Shared(_) | Sharing::Unknown => None,
            }
        })
        .collect()
}

/// Logs one warning per `vfs` service whose root is on a local filesystem
/// while the records are shared (etcd): what is wrong, and what to do.
pub fn warn_local_vfs_roots(services: &[ServiceConfig]) {
    for (service, root, kind) in local_vfs_roots(services) {
        tracing::warn!(
            service = %service,
            root = %root.display(),
            fs_type = format!("{kind:#x}"),
            "the vfs root {} of service {service} is on a local filesystem while the records are \
             in etcd: other controllers cannot see the volumes it holds. Mount shared storage \
             (NFS, CephFS, ...) at this path on every controller, or use a driver whose storage \
             every controller reaches",
            root.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temporary_directory_is_local_and_a_missing_path_uses_its_parent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let here = sharing(dir.path());
        if cfg!(target_os = "linux") {
            assert!(
                matches!(here, Sharing::Local(_) | Sharing::Shared(_)),
                "{here:?}"
            );
        }
        assert_eq!(sharing(&dir.path().join("not/yet/made")), here);
    }

    #[test]
    fn only_vfs_services_on_local_filesystems_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let service = |name: &str, driver: &str| ServiceConfig {
            name: name.into(),
            driver: driver.into(),
            options: [(
                "root".to_owned(),
                toml::Value::String(dir.path().display().to_string()),
            )]
            .into(),
            allow: vec![],
            deny: vec![],
        };
        let services = [service("fs", "vfs"), service("img", "image")];
        let named = local_vfs_roots(&services);
        if let Sharing::Local(_) = sharing(dir.path()) {
            assert_eq!(named.len(), 1);
            assert_eq!(named[0].0, "fs");
            assert_eq!(named[0].1, dir.path());
        } else {
            assert!(named.is_empty());
        }
    }
}
