//! A data directory written by an earlier release keeps working.
//!
//! Releases before the binary record form stored every volume record,
//! snapshot record and intent as JSON (`serde_json` of the store's types).
//! This test makes such a directory from a real one: volumes, an
//! attachment, a snapshot, and an intent of a create that a crash
//! interrupted, all rewritten as JSON while the controller is stopped. The
//! controller then lists, inspects, settles, changes and removes them, and
//! what it writes from then on is the binary form.

use std::time::Duration;

use berth_controller::volumes::store::{Intent, Store, VolumeKey};
use berth_tests::{listed, vfs_root, Berthd};

/// The tree the controller keeps its records in (`volumes/store.rs`).
const TREE: &str = "volumes";

/// The first byte of every value in the records tree of the store at `db`.
fn first_bytes(db: &std::path::Path) -> Vec<(Vec<u8>, u8)> {
    let store = Store::open(db).expect("open the stopped controller's store");
    let tree = store.db().open_tree(TREE).expect("records tree");
    tree.iter()
        .map(|e| {
            let (k, v) = e.expect("entry");
            (k.to_vec(), v[0])
        })
        .collect()
}

/// Rewrites every record of the stopped controller's store as the JSON an
/// earlier release wrote, and turns volume `half`'s record into the create
/// intent a crash would have left.
fn rewrite_as_earlier_release(db: &std::path::Path) {
    let store = Store::open(db).expect("open the stopped controller's store");
    let tree = store.db().open_tree(TREE).expect("records tree");
    let keys: Vec<_> = tree.iter().keys().map(|k| k.expect("key")).collect();
    let mut rewritten = 0;
    for raw in keys {
        let key = VolumeKey::from_cursor(&raw[2..]).expect("a record key");
        let json = match raw[0] {
            b'v' if key.name == "half" => {
                let record = store.get(&key).expect("get").expect("record");
                tree.remove(&raw).expect("remove half's record");
                let intent = Intent::Create { record };
                let mut k = raw.to_vec();
                k[0] = b'i';
                tree.insert(k, serde_json::to_vec(&intent).expect("JSON"))
                    .expect("write the intent");
                rewritten += 1;
                continue;
            }
            b'v' => serde_json::to_vec(&store.get(&key).expect("get").expect("record")),
            b's' => serde_json::to_vec(&store.snapshot(&key).expect("get").expect("snapshot")),
            other => panic!("a clean stop left an entry of kind {:?}", other as char),
        }
        .expect("JSON");
        assert_eq!(json[0], b'{');
        tree.insert(raw, json).expect("write JSON");
        rewritten += 1;
    }
    assert_eq!(rewritten, 4, "keep, gone, half and the snapshot");
    store.db().flush().expect("flush");
}

fn stop(d: &mut Berthd) {
    d.signal("TERM");
    assert!(
        d.wait_exit(Duration::from_secs(30)).is_some(),
        "berthd did not stop"
    );
}

#[test]
fn a_data_directory_with_json_records_keeps_working() {
    let mut d = Berthd::start();
    d.berth(&["volume", "create", "keep", "--opt", "mode=0750"])
        .success();
    d.berth(&["volume", "create", "gone"]).success();
    d.berth(&["volume", "create", "half"]).success();
    d.berth(&["volume", "attach", "keep", "--instance", "node-1"])
        .success();
    d.berth(&["snapshot", "create", "keep", "daily"]).success();
    let mut before = listed(&d);
    before.remove("half");
    let snapshots = d.berth(&["snapshot", "list", "-o", "json"]).json();
    stop(&mut d);
    let db = d.data_dir.join("db");
    assert!(
        first_bytes(&db).iter().all(|(_, b)| *b == 0x01),
        "this version writes the binary form"
    );
    rewrite_as_earlier_release(&db);
    assert!(first_bytes(&db).iter().all(|(_, b)| *b == b'{'));

    d.restart();
    // The interrupted create is undone, as after a crash of that release.
    assert_eq!(listed(&d), before);
    assert!(!vfs_root(&d).join("half").exists(), "half was not undone");
    let keep = d.berth(&["volume", "inspect", "keep", "-o", "json"]).json();
    assert_eq!(keep["options"]["mode"], "0750", "{keep}");
    assert_eq!(keep["attachments"][0]["instance"], "node-1", "{keep}");
    assert_eq!(
        d.berth(&["snapshot", "list", "-o", "json"]).json(),
        snapshots
    );

    // Changed and removed through the API.
    d.berth(&["volume", "remove", "gone"]).success();
    assert!(!vfs_root(&d).join("gone").exists());
    d.berth(&["volume", "detach", "keep", "--instance", "node-1"])
        .success();
    let keep = d.berth(&["volume", "inspect", "keep", "-o", "json"]).json();
    assert_eq!(keep["attachments"], serde_json::json!([]), "{keep}");
    assert_eq!(keep["options"]["mode"], "0750", "{keep}");
    stop(&mut d);
    // What changed is binary now; the untouched snapshot is still JSON.
    let bytes = first_bytes(&db);
    let kinds: Vec<(u8, u8)> = bytes.iter().map(|(k, b)| (k[0], *b)).collect();
    assert_eq!(kinds, [(b's', b'{'), (b'v', 0x01)], "{bytes:?}");

    d.restart();
    d.berth(&["snapshot", "remove", "daily"]).success();
    d.berth(&["volume", "remove", "keep"]).success();
    assert!(listed(&d).is_empty());
    assert_eq!(
        d.berth(&["snapshot", "list", "-o", "json"]).json(),
        serde_json::json!([])
    );
}
