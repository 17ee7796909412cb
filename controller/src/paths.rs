//! The data directory and what lives in it.
//!
//! ```text
//! <data-dir>/db/        sled database of volume records      (0700)
//! <data-dir>/volumes/   root of the default `local` service
//! <data-dir>/tls/       the controller's TLS identity         (0700)
//! <data-dir>/auth/      token signing key, admin token        (0700)
//! <data-dir>/client.toml  a ready client profile              (0600)
//! ```

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

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

/// Problems with the data directory.
#[derive(Debug, thiserror::Error)]
#[error("cannot prepare the data directory {path}: {source}")]
pub struct DataDirError {
    path: PathBuf,
    source: std::io::Error,
}

/// An existing data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

/// Creates `dir` (and parents) with mode 0700 if missing.
pub fn create_private_dir(dir: &Path) -> Result<(), DataDirError> {
    let fail = |source| DataDirError {
        path: dir.to_owned(),
        source,
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
    /// Creates the data directory (0700) if needed.
    pub fn create(root: &Path) -> Result<Self, DataDirError> {
        create_private_dir(root)?;
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

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn db(&self) -> PathBuf {
        self.root.join("db")
    }

    pub fn volumes(&self) -> PathBuf {
        self.root.join("volumes")
    }

    pub fn tls(&self) -> PathBuf {
        self.root.join("tls")
    }

    pub fn auth(&self) -> PathBuf {
        self.root.join("auth")
    }
}
