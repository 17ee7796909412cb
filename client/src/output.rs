//! What the client prints: aligned tables for people, JSON for scripts.

use std::time::{Duration, UNIX_EPOCH};

use comfy_table::{presets, Table};
use serde_json::{json, Value};

use crate::pb;
use crate::size::display_size;

/// The output format chosen with `-o/--output`. The variants' doc comments
/// are what `berth --help` shows for each value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// Pretty-printed JSON for scripts.
    Json,
}

/// RFC 3339 time of a protobuf timestamp.
pub fn time(ts: Option<&prost_types::Timestamp>) -> String {
    match ts {
        Some(ts) if ts.seconds >= 0 => {
            let t = UNIX_EPOCH
                + Duration::new(ts.seconds as u64, ts.nanos.clamp(0, 999_999_999) as u32);
            // humantime cannot show years past 9999: fall back to seconds.
            let mut out = String::new();
            let shown = humantime::format_rfc3339_seconds(t);
            match std::fmt::Write::write_fmt(&mut out, format_args!("{shown}")) {
                Ok(()) => out,
                Err(_) => format!("@{}", ts.seconds),
            }
        }
        _ => String::new(),
    }
}

fn status(v: &pb::Volume) -> &'static str {
    match pb::VolumeStatus::try_from(v.status) {
        Ok(pb::VolumeStatus::Available) => "available",
        Ok(pb::VolumeStatus::Attached) => "attached",
        _ => "unknown",
    }
}

/// A volume as a JSON object with the fields of the volume record.
pub fn volume_json(v: &pb::Volume) -> Value {
    let sorted = |m: &std::collections::BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<serde_json::Map<_, _>>()
    };
    json!({
        "id": v.id,
        "name": v.name,
        "service": v.service,
        "driver": v.driver,
        "size_bytes": v.size_bytes,
        "used_bytes": v.used_bytes,
        "created_at": time(v.created_at.as_ref()),
        "options": sorted(&v.options),
        "status": status(v),
        "fields": sorted(&v.fields),
        "attachments": v.attachments.iter().map(|a| json!({
            "instance": a.instance,
            "device": a.device,
            "fields": sorted(&a.fields),
        })).collect::<Vec<_>>(),
        "source": v.source,
    })
}

/// A snapshot as a JSON object.
pub fn snapshot_json(s: &pb::Snapshot) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "service": s.service,
        "volume": s.volume,
        "size_bytes": s.size_bytes,
        "created_at": time(s.created_at.as_ref()),
    })
}

/// Snapshots as a table.
pub fn snapshot_table(snaps: &[pb::Snapshot]) -> String {
    let mut t = table(&["NAME", "SERVICE", "VOLUME", "SIZE", "CREATED"]);
    for s in snaps {
        t.add_row(vec![
            s.name.clone(),
            s.service.clone(),
            s.volume.clone(),
            display_size(s.size_bytes),
            time(s.created_at.as_ref()),
        ]);
    }
    render(&t)
}

/// A borderless table with a header row.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING).set_header(header.to_vec());
    t
}

/// A table as text, without the padding at line ends.
pub fn render(table: &Table) -> String {
    table
        .lines()
        .map(|l| l.trim_end().trim_start_matches(' ').to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `berth volume list` as a table.
pub fn volume_table(volumes: &[pb::Volume]) -> String {
    const HEADER: [&str; 7] = [
        "NAME", "SERVICE", "DRIVER", "SIZE", "USED", "STATUS", "CREATED",
    ];
    let rows: Vec<Vec<String>> = volumes
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.service.clone(),
                v.driver.clone(),
                display_size(v.size_bytes),
                v.used_bytes.map_or_else(|| "-".to_owned(), display_size),
                status(v).to_owned(),
                time(v.created_at.as_ref()),
            ]
        })
        .collect();
    // The listing is the one table a cold `berth` prints on its hot path:
    // comfy-table's layout was a tenth of the whole process's instructions.
    if let Some(text) = plain_columns(&HEADER, &rows) {
        return text;
    }
    let mut t = table(&HEADER);
    for row in rows {
        t.add_row(row);
    }
    render(&t)
}

/// The text [`render`] makes of [`table`]`(header)` with `rows`, laid out
/// directly: each cell padded to its column's width with one space either
/// side, then the line's ends trimmed as [`render`] trims them. Only for
/// cells of printable ASCII (one byte, one column, one line); `None`
/// otherwise, and the caller lets comfy-table measure the text.
fn plain_columns(header: &[&str], rows: &[Vec<String>]) -> Option<String> {
    let printable = |c: &str| c.bytes().all(|b| (b' '..=b'~').contains(&b));
    if !header.iter().all(|c| printable(c)) || !rows.iter().flatten().all(|c| printable(c)) {
        return None;
    }
    let mut widths: Vec<usize> = header.iter().map(|c| c.len()).collect();
    for row in rows {
        if row.len() != widths.len() {
            return None;
        }
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = String::new();
    let lines = std::iter::once(header.to_vec())
        .chain(rows.iter().map(|r| r.iter().map(String::as_str).collect()));
    for (i, cells) in lines.enumerate() {
        line.clear();
        for (cell, width) in cells.iter().zip(&widths) {
            line.push(' ');
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', width - cell.len() + 1));
        }
        if i > 0 {
            out.push('\n');
        }
        out.push_str(line.trim_end().trim_start_matches(' '));
    }
    Some(out)
}

/// One volume as key/value lines. The driver's own facts come last, right
/// under the `driver` row they belong to; an empty option list reads
/// `none`, never as a blank row the driver's facts seem to continue.
pub fn volume_detail(v: &pb::Volume) -> String {
    let mut t = table(&["FIELD", "VALUE"]);
    let mut options: Vec<_> = v.options.iter().map(|(k, v)| format!("{k}={v}")).collect();
    options.sort();
    t.add_row(vec!["name".into(), v.name.clone()]);
    t.add_row(vec!["id".into(), v.id.clone()]);
    t.add_row(vec!["service".into(), v.service.clone()]);
    let size = match v.size_bytes {
        0 => "0 B (unsized: the driver sets no limit)".to_owned(),
        n => format!("{} ({n} bytes)", display_size(n)),
    };
    t.add_row(vec!["size".into(), size]);
    if let Some(used) = v.used_bytes {
        t.add_row(vec![
            "used".into(),
            format!("{} ({used} bytes)", display_size(used)),
        ]);
    }
    t.add_row(vec!["status".into(), status(v).to_owned()]);
    t.add_row(vec!["created".into(), time(v.created_at.as_ref())]);
    let options = if options.is_empty() {
        "none".to_owned()
    } else {
        options.join(", ")
    };
    t.add_row(vec!["options".into(), options]);
    for a in &v.attachments {
        t.add_row(vec![
            "attached".into(),
            format!("{} at {}", a.instance, a.device),
        ]);
    }
    if !v.source.is_empty() {
        t.add_row(vec!["source".into(), v.source.clone()]);
    }
    t.add_row(vec!["driver".into(), v.driver.clone()]);
    for (k, value) in &v.fields {
        t.add_row(vec![k.clone(), value.clone()]);
    }
    render(&t)
}

/// `berth service list` as a table.
pub fn service_table(services: &[pb::Service]) -> String {
    let mut t = table(&["NAME", "DRIVER", "CAPABILITIES", "STATUS"]);
    for s in services {
        t.add_row(vec![
            s.name.clone(),
            s.driver.clone(),
            capabilities(s.capabilities.as_ref()).join(","),
            if s.unavailable.is_empty() {
                "available".into()
            } else {
                format!("unavailable: {}", s.unavailable)
            },
        ]);
    }
    render(&t)
}

/// The capability names a service declares.
pub fn capabilities(c: Option<&pb::Capabilities>) -> Vec<&'static str> {
    let Some(c) = c else { return vec![] };
    [
        (c.attach, "attach"),
        (c.multi_attach, "multi-attach"),
        (c.snapshot, "snapshot"),
        (c.copy, "copy"),
        (c.create_from_snapshot, "from-snapshot"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect()
}

/// `berth service list` as JSON.
pub fn service_json(s: &pb::Service) -> Value {
    json!({
        "name": s.name,
        "driver": s.driver,
        "capabilities": capabilities(s.capabilities.as_ref()),
        "available": s.unavailable.is_empty(),
        "unavailable": (!s.unavailable.is_empty()).then_some(&s.unavailable),
    })
}

/// The role of a credential's scope, in words.
pub fn role(scope: Option<&pb::Scope>) -> &'static str {
    match scope.map(|s| pb::Role::try_from(s.role)) {
        Some(Ok(pb::Role::Admin)) => "admin",
        Some(Ok(pb::Role::User)) => "user",
        _ => "unknown",
    }
}

/// The services of a credential's scope, comma-separated.
pub fn services(scope: Option<&pb::Scope>) -> String {
    scope.map(|s| s.services.join(",")).unwrap_or_default()
}

fn yes_no(on: bool) -> String {
    if on { "yes" } else { "no" }.to_owned()
}

/// An issued token (not the token itself) as JSON.
pub fn token_json(t: &pb::TokenInfo) -> Value {
    json!({
        "jti": t.jti,
        "subject": t.subject,
        "role": role(t.scope.as_ref()),
        "services": t.scope.as_ref().map(|s| s.services.clone()).unwrap_or_default(),
        "issued_at": time(t.issued_at.as_ref()),
        "expires_at": time(t.expires_at.as_ref()),
        "revoked": t.revoked,
        "bootstrap": t.bootstrap,
    })
}

/// `berth token list` as a table.
pub fn token_table(tokens: &[pb::TokenInfo]) -> String {
    let mut t = table(&["JTI", "SUBJECT", "ROLE", "SERVICES", "EXPIRES", "REVOKED"]);
    for tok in tokens {
        t.add_row(vec![
            tok.jti.clone(),
            tok.subject.clone(),
            role(tok.scope.as_ref()).into(),
            services(tok.scope.as_ref()),
            time(tok.expires_at.as_ref()),
            yes_no(tok.revoked),
        ]);
    }
    render(&t)
}

/// A signed client certificate as JSON.
pub fn cert_json(c: &pb::CertificateInfo) -> Value {
    json!({
        "serial": c.serial,
        "subject": c.subject,
        "role": role(c.scope.as_ref()),
        "services": c.scope.as_ref().map(|s| s.services.clone()).unwrap_or_default(),
        "not_before": time(c.not_before.as_ref()),
        "not_after": time(c.not_after.as_ref()),
        "revoked": c.revoked,
    })
}

/// `berth cert list` as a table.
pub fn cert_table(certs: &[pb::CertificateInfo]) -> String {
    let mut t = table(&[
        "SERIAL", "SUBJECT", "ROLE", "SERVICES", "EXPIRES", "REVOKED",
    ]);
    for c in certs {
        t.add_row(vec![
            c.serial.clone(),
            c.subject.clone(),
            role(c.scope.as_ref()).into(),
            services(c.scope.as_ref()),
            time(c.not_after.as_ref()),
            yes_no(c.revoked),
        ]);
    }
    render(&t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What comfy-table makes of the same header and rows.
    fn by_comfy(header: &[&str], rows: &[Vec<String>]) -> String {
        let mut t = table(header);
        for row in rows {
            t.add_row(row.clone());
        }
        render(&t)
    }

    #[test]
    fn plain_columns_lay_out_what_comfy_table_lays_out() {
        let header = ["NAME", "SERVICE", "SIZE", "CREATED"];
        let row = |cells: [&str; 4]| cells.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        let cases: Vec<Vec<Vec<String>>> = vec![
            vec![],
            vec![row(["db", "local", "10 GiB", "2026-12-03T22:39:44Z"])],
            vec![
                row(["a-much-longer-volume-name", "local", "1 GiB", ""]),
                row(["x", "a-long-service", "-", "2026-12-03T22:39:44Z"]),
                row(["", "", "", ""]),
                row(["  leading", "trailing  ", " both ", "~!@#$%^&*()"]),
            ],
        ];
        for rows in cases {
            let plain = plain_columns(&header, &rows).expect("printable ASCII");
            assert_eq!(plain, by_comfy(&header, &rows), "rows: {rows:?}");
        }
    }

    #[test]
    fn cells_beyond_printable_ascii_are_left_to_comfy_table() {
        let header = ["NAME", "SIZE"];
        for odd in ["données", "two\nlines", "tab\there", "宽"] {
            let rows = vec![vec![odd.to_owned(), "1 GiB".to_owned()]];
            assert_eq!(plain_columns(&header, &rows), None, "{odd:?}");
        }
    }

    #[test]
    fn the_volume_table_reads_as_before() {
        let volume = |name: &str, used: Option<u64>| pb::Volume {
            name: name.into(),
            service: "local".into(),
            driver: "vfs".into(),
            size_bytes: 1 << 30,
            used_bytes: used,
            status: pb::VolumeStatus::Available as i32,
            created_at: Some(prost_types::Timestamp {
                seconds: 1_790_000_000,
                nanos: 0,
            }),
            ..Default::default()
        };
        let text = volume_table(&[volume("db", Some(4096)), volume("scratch-1", None)]);
        assert_eq!(
            text,
            "NAME       SERVICE  DRIVER  SIZE   USED   STATUS     CREATED\n\
             db         local    vfs     1 GiB  4 KiB  available  2026-09-21T14:13:20Z\n\
             scratch-1  local    vfs     1 GiB  -      available  2026-09-21T14:13:20Z"
        );
    }
}
