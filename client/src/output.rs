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
    let mut t = table(&[
        "NAME", "SERVICE", "DRIVER", "SIZE", "USED", "STATUS", "CREATED",
    ]);
    for v in volumes {
        t.add_row(vec![
            v.name.clone(),
            v.service.clone(),
            v.driver.clone(),
            display_size(v.size_bytes),
            v.used_bytes.map_or_else(|| "-".to_owned(), display_size),
            status(v).to_owned(),
            time(v.created_at.as_ref()),
        ]);
    }
    render(&t)
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
