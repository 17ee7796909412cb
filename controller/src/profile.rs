//! The ready-made client profile: `<data-dir>/client.toml`, written at every
//! start with the address, the fingerprint and the admin credential, and
//! installed as the user's default client configuration when they have none.

use std::path::{Path, PathBuf};

use crate::fsio::{self, FileError};
use crate::paths::{self, DataDirError};

/// Why the profile could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Writing a file failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// The configuration directory could not be made.
    #[error(transparent)]
    Dir(#[from] DataDirError),
}

/// What goes into the profile.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The controller's address, as clients dial it.
    pub host: String,
    /// `None` when serving plaintext.
    pub fingerprint: Option<String>,
    /// The admin token file, if the profile should name it.
    pub token_file: Option<PathBuf>,
}

impl Profile {
    /// The profile as TOML, in the client's configuration format, opening
    /// with comments that describe the file at `path`: the copy berthd
    /// refreshes in its data directory, or the one installed as the user's
    /// default configuration (`installed`), which berthd never rewrites.
    pub fn to_toml(&self, path: &Path, installed: bool) -> String {
        let mut out = if installed {
            format!(
                "# Your berth client configuration ({}), installed by berthd on its\n\
                 # first start because you had none. `berth` reads it without any flag.\n\
                 # berthd never rewrites it: edit it freely. It names this controller,\n\
                 # its fingerprint and the admin token.\n",
                path.display()
            )
        } else {
            format!(
                "# A client profile for this controller ({}), rewritten by berthd at\n\
                 # every start with its address, fingerprint and admin token.\n\
                 # Use it with `berth --config {}`, or merge it into your own client\n\
                 # configuration; edits here are lost at the next start.\n",
                path.display(),
                path.display()
            )
        };
        out.push_str(&format!("host = {}\n\n", quote(&self.host)));
        out.push_str(&format!("[controllers.{}]\n", quote(&self.host)));
        match &self.fingerprint {
            Some(fp) => out.push_str(&format!("fingerprint = {}\n", quote(fp))),
            None => out.push_str("plaintext = true\n"),
        }
        if let Some(token) = &self.token_file {
            out.push_str(&format!(
                "token_file = {}\n",
                quote(&token.display().to_string())
            ));
        }
        out
    }
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The user's default client configuration path:
/// `$XDG_CONFIG_HOME/berth/config.toml` or `~/.config/berth/config.toml`.
pub fn default_client_config() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("berth").join("config.toml"))
}

/// Writes `<data-dir>/client.toml` (0600) and, if the invoking user has no
/// client configuration yet, installs it there (never overwriting). Returns
/// the installed path, if any.
pub fn write(data_dir: &Path, profile: &Profile) -> Result<Option<PathBuf>, ProfileError> {
    let own = data_dir.join(paths::CLIENT_PROFILE);
    fsio::replace(&own, profile.to_toml(&own, false).as_bytes(), 0o600)?;
    let Some(target) = default_client_config() else {
        return Ok(None);
    };
    if target.exists() {
        return Ok(None);
    }
    if let Some(dir) = target.parent() {
        paths::create_private_dir(dir)?;
    }
    match fsio::write_private_new(&target, profile.to_toml(&target, true).as_bytes()) {
        Ok(()) => Ok(Some(target)),
        // Someone else created it meanwhile: theirs stays.
        Err(e) if e.already_exists() => Ok(None),
        Err(e) => Err(e.into()),
    }
}
