//! The metadata files the file-based drivers (`vfs`, `image`) keep beside
//! their data, and the path rule both follow: one `key=value` file per
//! volume (`size_bytes=N`) or snapshot (`volume=V`, `size_bytes=N`), named
//! after it, whose existence is the object's existence.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{CreateRequest, DriverError, DriverResult, DriverSnapshot, DriverVolume, VolumeName};

/// `dir/<name>`, refusing anything that is not exactly one normal,
/// non-hidden component below `dir`: the second wall behind name validation.
pub(crate) fn child(dir: &Path, name: &str) -> DriverResult<PathBuf> {
    let mut components = Path::new(name).components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(c)), None) if c == name && !name.starts_with('.') => {
            Ok(dir.join(name))
        }
        _ => Err(DriverError::InvalidArgument(format!(
            "refusing name {name:?}: it would leave {}",
            dir.display()
        ))),
    }
}

/// A unique suffix for staging and trash entries.
pub(crate) fn stamp() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{nanos}.{}", std::process::id())
}

/// Parses `key=value` lines.
fn parse(text: &str) -> BTreeMap<&str, &str> {
    text.lines().filter_map(|l| l.split_once('=')).collect()
}

fn corrupt(path: &Path) -> DriverError {
    DriverError::Internal(format!("metadata {} is corrupt", path.display()))
}

/// The text of `dir/<name>`, or `None` if there is no such file.
fn read(dir: &Path, name: &VolumeName) -> DriverResult<Option<(PathBuf, String)>> {
    let path = child(dir, name.as_str())?;
    match fs::read_to_string(&path) {
        Ok(text) => Ok(Some((path, text))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DriverError::io(format!("reading {}", path.display()), e)),
    }
}

/// A volume's recorded size, or `None` if it does not exist.
pub(crate) fn volume_size(dir: &Path, name: &VolumeName) -> DriverResult<Option<u64>> {
    let Some((path, text)) = read(dir, name)? else {
        return Ok(None);
    };
    parse(&text)
        .get("size_bytes")
        .and_then(|n| n.parse().ok())
        .map(Some)
        .ok_or_else(|| corrupt(&path))
}

/// A snapshot's record, or `None` if it does not exist.
pub(crate) fn snapshot(dir: &Path, name: &VolumeName) -> DriverResult<Option<DriverSnapshot>> {
    let Some((path, text)) = read(dir, name)? else {
        return Ok(None);
    };
    let meta = parse(&text);
    let volume = meta.get("volume").and_then(|v| VolumeName::parse(v).ok());
    let size = meta.get("size_bytes").and_then(|n| n.parse().ok());
    match (volume, size) {
        (Some(volume), Some(size_bytes)) => Ok(Some(DriverSnapshot {
            name: name.clone(),
            volume,
            size_bytes,
        })),
        _ => Err(corrupt(&path)),
    }
}

/// Records a volume (durably).
pub(crate) fn write_volume(dir: &Path, name: &VolumeName, size_bytes: u64) -> DriverResult<()> {
    crate::file::durable::write_atomic(
        &child(dir, name.as_str())?,
        format!("size_bytes={size_bytes}\n").as_bytes(),
    )
}

/// Records a snapshot (durably).
pub(crate) fn write_snapshot(dir: &Path, snapshot: &DriverSnapshot) -> DriverResult<()> {
    crate::file::durable::write_atomic(
        &child(dir, snapshot.name.as_str())?,
        format!(
            "volume={}\nsize_bytes={}\n",
            snapshot.volume, snapshot.size_bytes
        )
        .as_bytes(),
    )
}

/// The create rule both drivers keep: an existing volume of the same size
/// answers again, one of another size is AlreadyExists, none is `None`.
pub(crate) fn existing(
    recorded: Option<u64>,
    request: &CreateRequest,
    volume: impl FnOnce(u64) -> DriverResult<DriverVolume>,
) -> DriverResult<Option<DriverVolume>> {
    match recorded {
        None => Ok(None),
        Some(size) if size == request.size_bytes => volume(size).map(Some),
        Some(size) => Err(DriverError::AlreadyExists(format!(
            "volume {} already exists with size {size} bytes, not {}",
            request.name, request.size_bytes
        ))),
    }
}

/// Valid names of the entries of a metadata directory (temporary files and
/// strays skipped).
pub(crate) fn names_in(dir: &Path) -> DriverResult<Vec<VolumeName>> {
    let fail = |e| DriverError::io(format!("listing {}", dir.display()), e);
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(fail)? {
        let entry = entry.map_err(fail)?;
        if let Some(name) = entry
            .file_name()
            .to_str()
            .and_then(|n| VolumeName::parse(n).ok())
        {
            names.push(name);
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_never_leave_the_dir() {
        let root = Path::new("/r");
        for bad in ["..", ".", "a/b", "/etc", ".berth", "", "x/../.."] {
            assert!(child(root, bad).is_err(), "{bad:?}");
        }
        assert_eq!(child(root, "ok").expect("ok"), root.join("ok"));
    }
}
