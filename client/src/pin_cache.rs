//! A read cache of the trust store's pins, beside it, that the sled store
//! remains the truth for.
//!
//! Opening sled costs a cold `berth` command more than everything else it
//! does (two `fsync`s and a pool of I/O threads, 8 to 12 ms on a virtual
//! disk), although almost every command only reads one pin. So every write
//! to the store also writes its pins to a small text file next to it
//! (`<store>.pins`, e.g. `~/.local/share/berth/trust.pins`), and a command
//! that only reads uses that file when it is current.
//!
//! Why a reader never trusts a pin that was removed (or misses one that was
//! added): a writer, holding sled's lock, (1) deletes the cache and syncs its
//! directory, (2) changes sled and flushes it, (3) writes the new cache
//! (temporary file, rename). A reader that opens the cache after (1) either
//! finds none (and reads sled, waiting for the lock) or finds the one (3)
//! wrote; a reader that opened it before (1) read the pins as they were
//! before the write began, as if it had run first. As a second guard for a
//! store changed by something that does not know the cache (an older
//! `berth`), the cache records the identity, size and times of sled's `db`
//! file and is ignored when they differ. A cache that cannot be read,
//! parsed or matched is ignored, never an error: sled answers instead.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::pinning::Fingerprint;

const HEADER: &str =
    "# berth trust store pin cache v1: a copy of the sled store beside it; delete at will";

/// The cache file of the store at `store`.
pub(crate) fn path_for(store: &Path) -> PathBuf {
    let mut name = store
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "trust".into());
    name.push(".pins");
    store.with_file_name(name)
}

/// What identifies the state of sled's log file: it changes whenever sled
/// writes.
fn stamp(store: &Path) -> Option<String> {
    let meta = fs::metadata(store.join("db")).ok()?;
    Some(format!(
        "{} {} {} {}.{} {}.{}",
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    ))
}

/// The pins, if the cache exists, is whole and matches the store.
pub(crate) fn read(store: &Path) -> Option<BTreeMap<String, Fingerprint>> {
    let text = fs::read_to_string(path_for(store)).ok()?;
    let mut lines = text.lines();
    if lines.next()? != HEADER {
        return None;
    }
    let recorded = lines.next()?.strip_prefix("stamp ")?;
    let mut pins = BTreeMap::new();
    for line in lines {
        let mut fields = line.split(' ');
        match (fields.next(), fields.next(), fields.next(), fields.next()) {
            (Some("pin"), Some(host), Some(fp), None) => {
                pins.insert(host.to_owned(), fp.parse().ok()?);
            }
            (Some("end"), Some(count), None, None) => {
                // Read the stamp last: a store written since the cache was
                // read shows a different one.
                let whole = count.parse::<usize>().ok()? == pins.len();
                return (whole && stamp(store)?.as_str() == recorded).then_some(pins);
            }
            _ => return None,
        }
    }
    None
}

/// Step (1) of a write: the cache is gone, durably, before sled changes.
pub(crate) fn invalidate(store: &Path) -> io::Result<()> {
    let path = path_for(store);
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    match path.parent() {
        Some(dir) => fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Step (3) of a write, or a refresh after a read from sled: `pins` (all of
/// them, read from sled while holding its lock) become the cache.
pub(crate) fn write(store: &Path, pins: &[(String, Fingerprint)]) -> io::Result<()> {
    let Some(stamp) = stamp(store) else {
        return Ok(());
    };
    let mut text = format!("{HEADER}\nstamp {stamp}\n");
    for (host, fp) in pins {
        if host.contains([' ', '\n', '\r']) {
            // Not a HOST:PORT; leave such a store to sled.
            return Ok(());
        }
        text.push_str(&format!("pin {host} {fp}\n"));
    }
    text.push_str(&format!("end {}\n", pins.len()));
    let path = path_for(store);
    let tmp = path.with_extension(format!("pins.{}.tmp", std::process::id()));
    // A leftover of a crashed writer with this pid goes; `create_new`
    // (O_EXCL) never follows a link someone placed there.
    let _ = fs::remove_file(&tmp);
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        fs::rename(&tmp, &path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_db(dir: &Path) -> PathBuf {
        let store = dir.join("trust");
        fs::create_dir_all(&store).expect("store");
        fs::write(store.join("db"), b"log").expect("db");
        store
    }

    #[test]
    fn a_written_cache_reads_back_until_the_store_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_with_db(dir.path());
        let pins = vec![
            ("a:7979".to_owned(), Fingerprint::of(b"a")),
            ("b:7979".to_owned(), Fingerprint::of(b"b")),
        ];
        write(&store, &pins).expect("write");
        assert_eq!(path_for(&store), dir.path().join("trust.pins"));
        let read_back = read(&store).expect("a current cache is read");
        assert_eq!(read_back.into_iter().collect::<Vec<_>>(), pins);
        // sled writes its log: the cache no longer speaks for the store.
        fs::write(store.join("db"), b"log, longer now").expect("db");
        assert!(read(&store).is_none(), "a stale cache was believed");
    }

    #[test]
    fn damaged_or_missing_caches_are_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_with_db(dir.path());
        assert!(read(&store).is_none(), "no cache yet");
        write(&store, &[("a:1".to_owned(), Fingerprint::of(b"a"))]).expect("write");
        let text = fs::read_to_string(path_for(&store)).expect("cache");
        // Cut short (no end line), a pin too many for its count, a bad pin.
        let damaged = [
            text.replace("end 1\n", ""),
            text.replace("end 1", "end 2"),
            text.replace("pin a:1 ", "pin a:1 zz"),
            text.replacen("\npin ", "\npin extra ", 1),
        ];
        for bad in damaged {
            fs::write(path_for(&store), &bad).expect("damage");
            assert!(read(&store).is_none(), "believed: {bad}");
        }
        invalidate(&store).expect("invalidate");
        assert!(!path_for(&store).exists());
        invalidate(&store).expect("invalidating nothing is fine");
    }
}
