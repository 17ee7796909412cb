//! How records and intents are stored, in one place for every record store
//! (sled, and etcd behind the `etcd` feature).
//!
//! A value this version writes is one format byte, [`BINARY`], followed by
//! a protobuf message (prost's derive on the private `*Wire` structs below;
//! their field tags are the format and never change meaning). Earlier
//! releases wrote JSON. A JSON text starts with `{` here (or whitespace, or
//! another value's first character), never with a byte below `0x09`, so the
//! first byte tells the two apart: values an earlier release wrote are still
//! read, and are written in the binary form the next time they change.
//! Bytes `0x00` to `0x08` other than [`BINARY`] are reserved for later
//! formats; a value starting with one is refused as written by a newer
//! version, never guessed at.
//!
//! The sled store writes the binary form ([`encode`]): a data directory is
//! one controller's, and an earlier `berthd` cannot read it back once this
//! one has written (no downgrade). The etcd store writes JSON
//! ([`encode_json`]): controllers of two releases may share one etcd while
//! they are upgraded one at a time, and the earlier one reads only JSON.
//! A later format must take a new format byte (or a JSON change readable
//! by this version): protobuf skips fields it does not know, so a new field
//! under [`BINARY`] would be dropped silently by this version.
//!
//! Why binary: listing a page decoded every record's JSON, 79k of the 266k
//! instructions of a `ListVolumes(10)` call (issue 18); the binary form
//! decodes without parsing text or escapes.

use prost::Message;

use crate::volumes::store::StoreError;
#[cfg(doc)]
use crate::volumes::store::{Intent, SnapshotRecord, VolumeRecord};

/// The format byte of the binary (protobuf) form, version 1.
pub const BINARY: u8 = 0x01;

/// The highest byte reserved for format bytes: JSON never starts with one
/// (its whitespace starts at `0x09`).
const LAST_FORMAT: u8 = 0x08;

/// Why a stored value cannot be read; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The value is empty.
    #[error("the value is empty; restore it from a backup or remove the entry")]
    Empty,
    /// A binary value does not decode.
    #[error("its binary form does not decode ({0}); restore it from a backup or remove the entry")]
    Binary(prost::DecodeError),
    /// A JSON value (an earlier release's form) does not parse.
    #[error("it is neither this version's binary form nor an earlier release's JSON ({0}); restore it from a backup or remove the entry")]
    Json(serde_json::Error),
    /// The value starts with a format byte this version does not know.
    #[error("it starts with format byte {0:#04x}, which this berthd does not know; it was written by a newer berthd: run that version")]
    UnknownFormat(u8),
    /// An intent names no operation.
    #[error("the intent names no operation; restore it from a backup or remove the entry")]
    NoOperation,
    /// A binary value lacks a field every record has (it was cut short or
    /// damaged): read as empty, it would name no volume.
    #[error("its binary form has no {0}; restore it from a backup or remove the entry")]
    Missing(&'static str),
    /// A key is not `<kind>/<service>/<name>`.
    #[error("the key is not <kind>/<service>/<name>; remove the entry")]
    BadKey,
}

/// A value kept in a record store ([`VolumeRecord`], [`SnapshotRecord`],
/// [`Intent`]). Sealed: the stored forms are this module's.
pub trait Stored: wire::Form {}

impl<T: wire::Form> Stored for T {}

/// How a key is named in errors: its bytes as text, NUL separators as `/`.
pub fn key_name(key: &[u8]) -> String {
    String::from_utf8_lossy(key).replace('\0', "/")
}

/// `value` in the binary form, format byte first. `key` names the entry in
/// the error.
pub fn encode<T: Stored>(key: &[u8], value: &T) -> Result<Vec<u8>, StoreError> {
    let wire = value.to_wire();
    let mut out = Vec::with_capacity(1 + wire.encoded_len());
    out.push(BINARY);
    wire.encode(&mut out).map_err(|source| StoreError::Encode {
        key: key_name(key),
        source,
    })?;
    Ok(out)
}

/// `value` in the JSON form every release reads, earlier ones included.
/// The etcd store writes this form: controllers of different releases may
/// share one etcd during a rolling upgrade, and an earlier release cannot
/// read the binary form. `key` names the entry in the error.
pub fn encode_json<T: Stored>(key: &[u8], value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::EncodeJson {
        key: key_name(key),
        source,
    })
}

/// The value stored under `key`, in whichever form it was written.
pub fn decode<T: Stored>(key: &[u8], raw: &[u8]) -> Result<T, StoreError> {
    read(raw).map_err(|source| StoreError::Corrupt {
        key: key_name(key),
        source,
    })
}

fn read<T: Stored>(raw: &[u8]) -> Result<T, FormatError> {
    match raw.split_first() {
        None => Err(FormatError::Empty),
        Some((&BINARY, body)) => {
            T::from_wire(<T as wire::Form>::Wire::decode(body).map_err(FormatError::Binary)?)
        }
        Some((&b, _)) if b <= LAST_FORMAT => Err(FormatError::UnknownFormat(b)),
        Some(_) => serde_json::from_slice(raw).map_err(FormatError::Json),
    }
}

/// The stored forms: prost messages whose field tags are the format. Public
/// only inside this module (the sealed [`Stored`] names [`wire::Form`]).
mod wire {
    use std::collections::BTreeMap;

    use prost::Message;

    use super::FormatError;
    use crate::volumes::store::{AttachmentRecord, Intent, SnapshotRecord, VolumeRecord};

    /// A type with a stored form: its message, to it and back. Values of
    /// earlier releases are read with its `Deserialize` (JSON).
    pub trait Form: Sized + serde::Serialize + for<'de> serde::Deserialize<'de> {
        /// The protobuf message it is stored as.
        type Wire: Message + Default;
        /// Its stored form.
        fn to_wire(&self) -> Self::Wire;
        /// Back from the stored form.
        fn from_wire(wire: Self::Wire) -> Result<Self, FormatError>;
    }

    /// A [`VolumeRecord`], stored.
    #[derive(Clone, PartialEq, Message)]
    pub struct VolumeWire {
        #[prost(string, tag = "1")]
        id: String,
        #[prost(string, tag = "2")]
        name: String,
        #[prost(string, tag = "3")]
        service: String,
        #[prost(string, tag = "4")]
        driver: String,
        #[prost(uint64, tag = "5")]
        size_bytes: u64,
        #[prost(uint64, tag = "6")]
        created_at_ms: u64,
        #[prost(btree_map = "string, string", tag = "7")]
        options: BTreeMap<String, String>,
        #[prost(btree_map = "string, string", tag = "8")]
        fields: BTreeMap<String, String>,
        #[prost(message, repeated, tag = "9")]
        attachments: Vec<AttachmentWire>,
        /// Present (even empty) only when the record has a source.
        #[prost(string, optional, tag = "10")]
        source: Option<String>,
    }

    /// An [`AttachmentRecord`], stored.
    #[derive(Clone, PartialEq, Message)]
    pub struct AttachmentWire {
        #[prost(string, tag = "1")]
        instance: String,
        #[prost(string, tag = "2")]
        device: String,
        #[prost(btree_map = "string, string", tag = "3")]
        fields: BTreeMap<String, String>,
    }

    /// A [`SnapshotRecord`], stored.
    #[derive(Clone, PartialEq, Message)]
    pub struct SnapshotWire {
        #[prost(string, tag = "1")]
        id: String,
        #[prost(string, tag = "2")]
        name: String,
        #[prost(string, tag = "3")]
        service: String,
        #[prost(string, tag = "4")]
        volume: String,
        #[prost(uint64, tag = "5")]
        size_bytes: u64,
        #[prost(uint64, tag = "6")]
        created_at_ms: u64,
    }

    /// An [`Intent`], stored: which operation, with its record.
    #[derive(Clone, PartialEq, Message)]
    pub struct IntentWire {
        #[prost(oneof = "IntentOp", tags = "1, 2, 3, 4")]
        op: Option<IntentOp>,
    }

    /// The operation of an [`IntentWire`].
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum IntentOp {
        #[prost(message, tag = "1")]
        Create(VolumeWire),
        #[prost(message, tag = "2")]
        Delete(VolumeWire),
        #[prost(message, tag = "3")]
        CreateSnapshot(SnapshotWire),
        #[prost(message, tag = "4")]
        DeleteSnapshot(SnapshotWire),
    }

    impl Form for VolumeRecord {
        type Wire = VolumeWire;

        fn to_wire(&self) -> VolumeWire {
            VolumeWire {
                id: self.id.clone(),
                name: self.name.clone(),
                service: self.service.clone(),
                driver: self.driver.clone(),
                size_bytes: self.size_bytes,
                created_at_ms: self.created_at_ms,
                options: self.options.clone(),
                fields: self.fields.clone(),
                attachments: self
                    .attachments
                    .iter()
                    .map(|a| AttachmentWire {
                        instance: a.instance.clone(),
                        device: a.device.clone(),
                        fields: a.fields.clone(),
                    })
                    .collect(),
                source: self.source.clone(),
            }
        }

        fn from_wire(w: VolumeWire) -> Result<Self, FormatError> {
            required(&[("id", &w.id), ("name", &w.name), ("service", &w.service)])?;
            Ok(VolumeRecord {
                id: w.id,
                name: w.name,
                service: w.service,
                driver: w.driver,
                size_bytes: w.size_bytes,
                created_at_ms: w.created_at_ms,
                options: w.options,
                fields: w.fields,
                attachments: w
                    .attachments
                    .into_iter()
                    .map(|a| AttachmentRecord {
                        instance: a.instance,
                        device: a.device,
                        fields: a.fields,
                    })
                    .collect(),
                source: w.source,
            })
        }
    }

    impl Form for SnapshotRecord {
        type Wire = SnapshotWire;

        fn to_wire(&self) -> SnapshotWire {
            SnapshotWire {
                id: self.id.clone(),
                name: self.name.clone(),
                service: self.service.clone(),
                volume: self.volume.clone(),
                size_bytes: self.size_bytes,
                created_at_ms: self.created_at_ms,
            }
        }

        fn from_wire(w: SnapshotWire) -> Result<Self, FormatError> {
            required(&[
                ("id", &w.id),
                ("name", &w.name),
                ("service", &w.service),
                ("volume", &w.volume),
            ])?;
            Ok(SnapshotRecord {
                id: w.id,
                name: w.name,
                service: w.service,
                volume: w.volume,
                size_bytes: w.size_bytes,
                created_at_ms: w.created_at_ms,
            })
        }
    }

    /// Refuses a record whose naming fields decoded empty: protobuf leaves
    /// out empty strings, so a value cut short reads as one with no id or
    /// name, which every record has (JSON refuses it as a missing field).
    fn required(fields: &[(&'static str, &String)]) -> Result<(), FormatError> {
        match fields.iter().find(|(_, value)| value.is_empty()) {
            Some((name, _)) => Err(FormatError::Missing(name)),
            None => Ok(()),
        }
    }

    impl Form for Intent {
        type Wire = IntentWire;

        fn to_wire(&self) -> IntentWire {
            let op = match self {
                Intent::Create { record } => IntentOp::Create(record.to_wire()),
                Intent::Delete { record } => IntentOp::Delete(record.to_wire()),
                Intent::CreateSnapshot { record } => IntentOp::CreateSnapshot(record.to_wire()),
                Intent::DeleteSnapshot { record } => IntentOp::DeleteSnapshot(record.to_wire()),
            };
            IntentWire { op: Some(op) }
        }

        fn from_wire(w: IntentWire) -> Result<Self, FormatError> {
            Ok(match w.op.ok_or(FormatError::NoOperation)? {
                IntentOp::Create(r) => Intent::Create {
                    record: VolumeRecord::from_wire(r)?,
                },
                IntentOp::Delete(r) => Intent::Delete {
                    record: VolumeRecord::from_wire(r)?,
                },
                IntentOp::CreateSnapshot(r) => Intent::CreateSnapshot {
                    record: SnapshotRecord::from_wire(r)?,
                },
                IntentOp::DeleteSnapshot(r) => Intent::DeleteSnapshot {
                    record: SnapshotRecord::from_wire(r)?,
                },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volumes::store::{AttachmentRecord, Intent, SnapshotRecord, VolumeRecord};

    fn volume() -> VolumeRecord {
        VolumeRecord {
            id: "id-1".into(),
            name: "data".into(),
            service: "fs".into(),
            driver: "vfs".into(),
            size_bytes: 1 << 30,
            created_at_ms: 1_764_000_000_123,
            options: [("size".into(), "1G".into()), ("a b".into(), "\"q\"".into())].into(),
            fields: [("path".into(), "/srv/fs/data".into())].into(),
            attachments: vec![AttachmentRecord {
                instance: "node-1".into(),
                device: "/srv/fs/data".into(),
                fields: [("mode".into(), "rw".into())].into(),
            }],
            source: Some(String::new()),
        }
    }

    fn snapshot() -> SnapshotRecord {
        SnapshotRecord {
            id: "s-1".into(),
            name: "daily".into(),
            service: "fs".into(),
            volume: "data".into(),
            size_bytes: 7,
            created_at_ms: 9,
        }
    }

    #[test]
    fn every_kind_round_trips_through_the_binary_form() {
        let key = b"v\0fs\0data";
        let raw = encode(key, &volume()).expect("encode");
        assert_eq!(raw[0], BINARY);
        assert_eq!(decode::<VolumeRecord>(key, &raw).expect("decode"), volume());
        // `None` and `Some("")` stay apart.
        let none = VolumeRecord {
            source: None,
            ..volume()
        };
        let raw = encode(key, &none).expect("encode");
        assert_eq!(decode::<VolumeRecord>(key, &raw).expect("decode"), none);
        let raw = encode(key, &snapshot()).expect("encode");
        assert_eq!(
            decode::<SnapshotRecord>(key, &raw).expect("decode"),
            snapshot()
        );
        for intent in [
            Intent::Create { record: volume() },
            Intent::Delete { record: none },
            Intent::CreateSnapshot { record: snapshot() },
            Intent::DeleteSnapshot { record: snapshot() },
        ] {
            let raw = encode(key, &intent).expect("encode");
            assert_eq!(decode::<Intent>(key, &raw).expect("decode"), intent);
        }
    }

    /// Values exactly as the releases before the binary form wrote them
    /// (serde_json of the records, `op`-tagged intents, fields that came
    /// later left out).
    #[test]
    fn json_written_by_earlier_releases_is_read() {
        let key = b"v\0fs\0old";
        let old = br#"{"id":"id-1","name":"old","service":"fs","driver":"vfs","size_bytes":5,"created_at_ms":6,"options":{"size":"1G"},"fields":{"path":"/p"}}"#;
        let record: VolumeRecord = decode(key, old).expect("old record");
        assert_eq!(record.name, "old");
        assert_eq!(record.options["size"], "1G");
        assert!(record.attachments.is_empty());
        assert_eq!(record.source, None);
        let with_all = br#"{"id":"i","name":"n","service":"fs","driver":"vfs","size_bytes":0,"created_at_ms":0,"options":{},"fields":{},"attachments":[{"instance":"node","device":"/d","fields":{"k":"v"}}],"source":"snapshot:s"}"#;
        let record: VolumeRecord = decode(key, with_all).expect("record with attachments");
        assert_eq!(record.attachments[0].fields["k"], "v");
        assert_eq!(record.source.as_deref(), Some("snapshot:s"));
        let intent = br#"{"op":"delete_snapshot","record":{"id":"s","name":"daily","service":"fs","volume":"data","size_bytes":1,"created_at_ms":2}}"#;
        let intent: Intent = decode(b"j\0fs\0daily", intent).expect("old intent");
        assert_eq!(intent.op(), "delete_snapshot");
        // Whitespace first is still JSON.
        let snap = b" \n{\"id\":\"s\",\"name\":\"n\",\"service\":\"fs\",\"volume\":\"v\",\"size_bytes\":1,\"created_at_ms\":2}";
        let snap: SnapshotRecord = decode(key, snap).expect("old snapshot");
        assert_eq!(snap.volume, "v");
    }

    #[test]
    fn unreadable_values_are_corrupt_and_name_their_key() {
        let key = b"v\0fs\0bad";
        let cases: [(&[u8], &str); 5] = [
            (b"", "empty"),
            (b"{\"id\":", "neither"),
            (&[BINARY, 0x0a, 0xff], "binary form does not decode"),
            (&[0x02, 1, 2], "newer berthd"),
            (&[0x00], "newer berthd"),
        ];
        for (raw, says) in cases {
            let err = decode::<VolumeRecord>(key, raw).expect_err("must not decode");
            assert!(
                matches!(&err, StoreError::Corrupt { key, .. } if key == "v/fs/bad"),
                "{err:?}"
            );
            let text = err.to_string();
            assert!(
                text.contains("\"v/fs/bad\"") && text.contains(says),
                "{text}"
            );
        }
        let err = decode::<Intent>(key, &[BINARY]).expect_err("an intent without op");
        assert!(err.to_string().contains("no operation"), "{err}");
    }

    /// A binary value cut short before its naming fields reads as a record
    /// with an empty id or name (protobuf leaves empty strings out); it is
    /// refused, as JSON refuses a missing field.
    #[test]
    fn a_binary_record_without_its_names_is_corrupt() {
        let key = b"v\0fs\0short";
        let whole = encode(key, &volume()).expect("encode");
        let err = decode::<VolumeRecord>(key, &whole[..1]).expect_err("a cut-short record");
        assert!(err.to_string().contains("has no id"), "{err}");
        let nameless = VolumeRecord {
            name: String::new(),
            ..volume()
        };
        let raw = encode(key, &nameless).expect("encode");
        let err = decode::<VolumeRecord>(key, &raw).expect_err("a nameless record");
        assert!(err.to_string().contains("has no name"), "{err}");
        let snapshot = SnapshotRecord {
            id: "i".into(),
            name: "n".into(),
            service: "s".into(),
            volume: String::new(),
            size_bytes: 0,
            created_at_ms: 0,
        };
        let raw = encode(key, &snapshot).expect("encode");
        let err = decode::<SnapshotRecord>(key, &raw).expect_err("no volume");
        assert!(err.to_string().contains("has no volume"), "{err}");
    }

    /// What the etcd store writes is JSON that reads back the same, and
    /// that an earlier release's plain `serde_json` reads too.
    #[test]
    fn the_json_form_round_trips_and_is_plain_json() {
        let key = b"v\0fs\0j";
        let record = volume();
        let raw = encode_json(key, &record).expect("encode");
        assert_eq!(raw.first(), Some(&b'{'));
        assert_eq!(decode::<VolumeRecord>(key, &raw).expect("decode"), record);
        let old: VolumeRecord = serde_json::from_slice(&raw).expect("plain serde_json");
        assert_eq!(old, record);
    }
}
