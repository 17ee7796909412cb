//! The data directory and what lives in it: every file name below is
//! defined here, once.
//!
//! ```text
//! <data-dir>/db/                sled database of volume records      (0700)
//! <data-dir>/volumes/           root of the default `local` service
//! <data-dir>/tls/               the controller's TLS identity         (0700)
//! <data-dir>/tls/ca.crt         the CA certificate: what clients pin  (0644)
//! <data-dir>/tls/ca.key         its private key                       (0600)
//! <data-dir>/tls/server.crt     server certificate + CA (the chain)   (0644)
//! <data-dir>/tls/server.key     its private key                       (0600)
//! <data-dir>/tls/fingerprint    the fingerprint clients pin           (0644)
//! <data-dir>/auth/              token signing key, admin token        (0700)
//! <data-dir>/auth/signing.key   Ed25519 token signing key (PKCS#8)    (0600)
//! <data-dir>/auth/signing.pub   its public half                       (0644)
//! <data-dir>/auth/admin.token   the bootstrap admin token             (0600)
//! <data-dir>/auth/controller.id this controller's id (bootstrap tokens)  (0600)
//! <data-dir>/client.toml        a ready client profile                (0600)
//! <data-dir>/berthd.pid         the running berthd's pid, locked      (0600)
//! <data-dir>/berthd.log         the log of `berthd --detach`          (0600)
//! ```
//!
//! One berthd at a time uses a data directory: it holds an exclusive lock
//! on `berthd.pid` ([`DataDirLock`]) while it runs, and a second one is
//! refused naming the first one's pid.
//!
//! At start the data directory, `tls/`, `auth/` and `db/` must each be a
//! real directory (not a link), owned by the user berthd runs as and not
//! writable by group or others; private keys must be regular files owned by
//! that user and readable by nobody else. [`check_private`] is that one
//! rule, for directories and key files alike.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// `tls/ca.crt`: the CA certificate.
pub const CA_CERT: &str = "ca.crt";
/// `tls/ca.key`: the CA's private key.
pub const CA_KEY: &str = "ca.key";
/// `tls/server.crt`: the generated server certificate chain.
pub const SERVER_CERT: &str = "server.crt";
/// `tls/server.key`: its private key.
pub const SERVER_KEY: &str = "server.key";
/// `tls/fingerprint`: the fingerprint clients pin, for `berthd fingerprint`.
pub const FINGERPRINT: &str = "fingerprint";
/// `auth/signing.key`: the token signing key.
pub const SIGNING_KEY: &str = "signing.key";
/// `auth/signing.pub`: its public half.
pub const SIGNING_PUB: &str = "signing.pub";
/// `auth/admin.token`: the bootstrap admin token.
pub const ADMIN_TOKEN: &str = "admin.token";
/// `auth/controller.id`: this controller's id, marking its bootstrap
/// admin tokens in a registry several controllers share.
pub const CONTROLLER_ID: &str = "controller.id";
/// `client.toml`: the ready-made client profile.
pub const CLIENT_PROFILE: &str = "client.toml";
/// `berthd.pid`: the running controller's pid, under an exclusive lock.
pub const PID_LOCK: &str = "berthd.pid";
/// `berthd.log`: where `berthd --detach` sends the controller's log.
pub const DETACHED_LOG: &str = "berthd.log";

/// Where the data directory is when none is given: `$XDG_DATA_HOME/berth`,
/// else `~/.local/share/berth`.
pub fn default_data_dir() -> Option<PathBuf> {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(xdg).join("berth"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|home| PathBuf::from(home).join(".local/share/berth"))
}

/// Why the data directory, one of its key directories or a private key
/// file cannot be used. Each message names the path and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// The file system refused an operation.
    #[error("cannot prepare {path}: {error}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What the system said.
        error: std::io::Error,
    },
    /// A symbolic link where berthd keeps keys or records.
    #[error("{path} is a symbolic link (to {target}); berthd does not follow links to its {what}: {fix}")]
    Link {
        /// The link.
        path: PathBuf,
        /// Where it points.
        target: String,
        /// What should be there.
        what: &'static str,
        /// The command or step that fixes it.
        fix: String,
    },
    /// Something else than what belongs there (a file for a directory).
    #[error("{path} is not a {expected}: move it away and start again")]
    WrongType {
        /// The path.
        path: PathBuf,
        /// "directory" or "regular file".
        expected: &'static str,
    },
    /// Owned by another user, who could change or replace what is inside.
    #[error("{path} is owned by uid {owner}, not by uid {me} that berthd runs as: run `chown -R {me} {path}`, or run berthd as its owner")]
    Foreign {
        /// The path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The effective uid of this process.
        me: u32,
    },
    /// A key or record directory others may write to.
    #[error("{path} is writable by group or others (mode {mode:o}); a directory holding keys or records must be private: run `chmod 700 {path}`")]
    DirExposed {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A private key others may read.
    #[error("{path} is readable by group or others (mode {mode:o}); a private key must be private: run `chmod 600 {path}`")]
    KeyExposed {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Another controller holds the data directory's lock.
    #[error("another berthd is already using {dir}{}; stop it (kill {}) or give this one another --data-dir", .pid.map(|p| format!(" (pid {p})")).unwrap_or_default(), .pid.map(|p| p.to_string()).unwrap_or_else(|| "its pid".into()))]
    InUse {
        /// The data directory.
        dir: PathBuf,
        /// The pid recorded by the controller holding it, if readable.
        pid: Option<u32>,
    },
}

/// The exclusive lock a running controller holds on its data directory
/// (`berthd.pid`, holding its pid), released when dropped or when the
/// process ends, however it ends.
#[derive(Debug)]
pub struct DataDirLock {
    _file: fs::File,
}

impl DataDirLock {
    /// Takes the lock of the data directory `root` (which must exist) and
    /// records this process's pid in it; [`DataDirError::InUse`] when
    /// another process holds it.
    pub fn acquire(root: &Path) -> Result<Self, DataDirError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        // The data directory has passed check_private: nobody else can
        // plant a link here.
        let path = root.join(PID_LOCK);
        let fail = |error| DataDirError::Io {
            path: path.clone(),
            error,
        };
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(fail)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(DataDirError::InUse {
                    dir: root.to_owned(),
                    pid: recorded_pid(&path),
                })
            }
            Err(fs::TryLockError::Error(e)) => return Err(fail(e)),
        }
        file.set_len(0).map_err(fail)?;
        writeln!(file, "{}", std::process::id()).map_err(fail)?;
        Ok(Self { _file: file })
    }

    /// Refuses, changing nothing, a data directory another process holds
    /// the lock of (a missing directory or lock file passes).
    pub fn check_free(root: &Path) -> Result<(), DataDirError> {
        let path = root.join(PID_LOCK);
        let Ok(file) = fs::File::open(&path) else {
            return Ok(());
        };
        match file.try_lock_shared() {
            Err(fs::TryLockError::WouldBlock) => Err(DataDirError::InUse {
                dir: root.to_owned(),
                pid: recorded_pid(&path),
            }),
            // Free (the shared lock goes with the file), or not lockable
            // here: acquire() will say.
            _ => Ok(()),
        }
    }
}

fn recorded_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// What a private path must be, for [`check_private`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Private {
    /// A directory holding keys or records (the data directory, `tls/`,
    /// `auth/`, `db/`): writable by its owner only.
    Dir,
    /// A private key file: readable and writable by its owner only.
    Key,
}

/// The effective uid of this process.
fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Refuses a private path that is a symbolic link, is not of the expected
/// kind, is owned by another user than the one berthd runs as, or that
/// group or others may write (a directory) or read (a key). The path itself
/// is examined (`symlink_metadata`), never a link's target. Once every
/// directory on the way is checked, nobody else can swap an entry between
/// this check and its use.
pub fn check_private(path: &Path, kind: Private) -> Result<(), DataDirError> {
    let meta = fs::symlink_metadata(path).map_err(|error| DataDirError::Io {
        path: path.to_owned(),
        error,
    })?;
    let (what, expected) = match kind {
        Private::Dir => ("data and key directories", "directory"),
        Private::Key => ("private keys", "regular file"),
    };
    if meta.file_type().is_symlink() {
        let target = fs::read_link(path)
            .map(|t| t.display().to_string())
            .unwrap_or_else(|_| "?".into());
        let fix = match kind {
            Private::Dir => format!(
                "put the real directory there (`rm {0} && mv {target} {0}`)",
                path.display()
            ),
            Private::Key => format!(
                "put the key file itself there (`cp --remove-destination {target} {}`)",
                path.display()
            ),
        };
        return Err(DataDirError::Link {
            path: path.to_owned(),
            target,
            what,
            fix,
        });
    }
    let right_type = match kind {
        Private::Dir => meta.is_dir(),
        Private::Key => meta.is_file(),
    };
    if !right_type {
        return Err(DataDirError::WrongType {
            path: path.to_owned(),
            expected,
        });
    }
    let me = euid();
    if meta.uid() != me {
        return Err(DataDirError::Foreign {
            path: path.to_owned(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    match kind {
        Private::Dir if mode & 0o022 != 0 => Err(DataDirError::DirExposed {
            path: path.to_owned(),
            mode,
        }),
        Private::Key if mode & 0o077 != 0 => Err(DataDirError::KeyExposed {
            path: path.to_owned(),
            mode,
        }),
        _ => Ok(()),
    }
}

/// [`check_private`] when something is at `path`; nothing there is fine
/// (berthd creates it, private, later).
fn check_if_present(path: &Path, kind: Private) -> Result<(), DataDirError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        _ => check_private(path, kind),
    }
}

/// An existing data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

/// Creates `dir` (and parents) with mode 0700 if missing.
pub fn create_private_dir(dir: &Path) -> Result<(), DataDirError> {
    let fail = |error| DataDirError::Io {
        path: dir.to_owned(),
        error,
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(fail)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(fail)?;
    }
    Ok(())
}

impl DataDir {
    /// Checks, creating nothing, what already exists of the data directory:
    /// the directory itself and its `tls/`, `auth/` and `db/` (see
    /// [`check_private`]). Missing ones pass.
    pub fn check(root: &Path) -> Result<(), DataDirError> {
        match check_if_present(root, Private::Dir) {
            // The data directory itself: naming its real place is the fix.
            Err(DataDirError::Link {
                path, target, what, ..
            }) => {
                let real = fs::canonicalize(root)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| target.clone());
                return Err(DataDirError::Link {
                    path,
                    target,
                    what,
                    fix: format!("name the real directory instead: --data-dir {real}"),
                });
            }
            other => other?,
        }
        let layout = Self::existing(root);
        for dir in [layout.tls(), layout.auth(), layout.db()] {
            check_if_present(&dir, Private::Dir)?;
        }
        Ok(())
    }

    /// Checks the data directory and its key directories, then creates the
    /// data directory (0700) if needed.
    pub fn create(root: &Path) -> Result<Self, DataDirError> {
        Self::check(root)?;
        create_private_dir(root)?;
        check_private(root, Private::Dir)?;
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// A data directory that must already exist (for read-only commands).
    pub fn existing(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    /// The data directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `db/`: the sled database.
    pub fn db(&self) -> PathBuf {
        self.root.join("db")
    }

    /// `volumes/`: the default `local` service's root.
    pub fn volumes(&self) -> PathBuf {
        self.root.join("volumes")
    }

    /// `tls/`: the controller's TLS identity.
    pub fn tls(&self) -> PathBuf {
        self.root.join("tls")
    }

    /// `auth/`: the token signing key and the admin token.
    pub fn auth(&self) -> PathBuf {
        self.root.join("auth")
    }

    /// `client.toml`: the ready-made client profile.
    pub fn client_profile(&self) -> PathBuf {
        self.root.join(CLIENT_PROFILE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_of_a_data_directory_names_the_holder() {
        let tmp = tempfile::tempdir().expect("tempdir");
        DataDirLock::check_free(tmp.path()).expect("no lock file yet");
        let held = DataDirLock::acquire(tmp.path()).expect("first lock");
        let me = std::process::id();
        for err in [
            DataDirLock::acquire(tmp.path()).expect_err("second lock"),
            DataDirLock::check_free(tmp.path()).expect_err("held"),
        ] {
            assert!(
                matches!(err, DataDirError::InUse { pid: Some(p), .. } if p == me),
                "{err}"
            );
            assert!(err.to_string().contains(&format!("(pid {me})")), "{err}");
        }
        drop(held);
        DataDirLock::check_free(tmp.path()).expect("released");
        DataDirLock::acquire(tmp.path()).expect("again");
    }

    #[test]
    fn one_rule_for_key_directories_and_key_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (dir, key) = (tmp.path().join("d"), tmp.path().join("k"));
        fs::create_dir(&dir).expect("dir");
        fs::write(&key, b"key").expect("key");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod");
        check_private(&dir, Private::Dir).expect("a 0755 directory of ours");
        check_private(&key, Private::Key).expect("a 0600 key of ours");

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).expect("chmod");
        let err = check_private(&dir, Private::Dir).expect_err("world-writable");
        assert!(err.to_string().contains("chmod 700"), "{err}");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).expect("chmod");
        let err = check_private(&key, Private::Key).expect_err("group-readable");
        assert!(err.to_string().contains("chmod 600"), "{err}");

        let link = tmp.path().join("l");
        std::os::unix::fs::symlink(&dir, &link).expect("link");
        let err = check_private(&link, Private::Dir).expect_err("a link");
        assert!(matches!(err, DataDirError::Link { .. }), "{err}");
        assert!(matches!(
            check_private(&key, Private::Dir),
            Err(DataDirError::WrongType { .. })
        ));
    }

    #[test]
    fn check_creates_nothing_and_create_refuses_a_bad_subdirectory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("data");
        DataDir::check(&root).expect("a missing data directory passes");
        assert!(!root.exists());
        fs::create_dir_all(root.join("auth")).expect("auth");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).expect("chmod");
        fs::set_permissions(root.join("auth"), fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = DataDir::create(&root).expect_err("auth is world-writable");
        assert!(err.to_string().contains("auth"), "{err}");
    }
}
