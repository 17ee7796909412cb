//! Progress of long work on a terminal (`volume copy`, `snapshot create`,
//! `volume create --from-snapshot`): a bar with the bytes done, the rate and
//! the time left while the controller streams its figures, then one line
//! with the elapsed time. Off a terminal, or with `-o json`, the commands
//! use the plain unary calls and print nothing of this.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use berth_client::output::Format;
use berth_client::pb;
use berth_client::size::display_size;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether to show progress: a table on a terminal (stderr).
pub fn wanted(format: Format) -> bool {
    format == Format::Table && std::io::stderr().is_terminal()
}

/// One event of a progress stream: a figure, or the result.
pub enum Event<T> {
    /// Bytes done out of a total.
    Progress(pb::Progress),
    /// The operation's result: the last event.
    Done(T),
}

/// Follows a progress stream to its result, drawing a bar on stderr for
/// `what` (e.g. `copying data to data2`); each event must come within
/// `timeout`. Ends with one line: what was done and how long it took.
pub async fn follow<E, T>(
    mut stream: tonic::Streaming<E>,
    what: &str,
    timeout: Duration,
    event: fn(E) -> Option<Event<T>>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{prefix} [{bar:20}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}, {eta} left",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(what.to_owned());
    let mut total = 0u64;
    loop {
        let next = tokio::time::timeout(timeout, stream.message())
            .await
            .map_err(|_| {
                bar.finish_and_clear();
                anyhow::anyhow!(
                    "no word from the controller within {}s while {what}; the operation may still complete there (look before retrying), or raise --timeout",
                    timeout.as_secs()
                )
            })?;
        let message = match next {
            Ok(Some(message)) => message,
            Ok(None) => {
                bar.finish_and_clear();
                anyhow::bail!("the controller ended the call without a result while {what}; look before retrying (e.g. berth volume list)")
            }
            Err(status) => {
                bar.finish_and_clear();
                return Err(status.into());
            }
        };
        match event(message) {
            Some(Event::Progress(p)) => {
                total = p.total_bytes.max(p.done_bytes);
                bar.set_length(total);
                bar.set_position(p.done_bytes);
                bar.tick();
            }
            Some(Event::Done(result)) => {
                bar.finish_and_clear();
                let elapsed = started.elapsed();
                let amount = match total {
                    0 => String::new(),
                    n => format!(
                        "{}, {}/s, ",
                        display_size(n),
                        display_size((n as f64 / elapsed.as_secs_f64().max(0.001)) as u64)
                    ),
                };
                eprintln!("done {what} ({amount}in {:.1}s)", elapsed.as_secs_f64());
                return Ok(result);
            }
            None => {}
        }
    }
}

/// The events of a volume stream.
pub fn volume_event(e: pb::VolumeProgress) -> Option<Event<pb::Volume>> {
    match e.event? {
        pb::volume_progress::Event::Progress(p) => Some(Event::Progress(p)),
        pb::volume_progress::Event::Volume(v) => Some(Event::Done(v)),
    }
}

/// The events of a snapshot stream.
pub fn snapshot_event(e: pb::SnapshotProgress) -> Option<Event<pb::Snapshot>> {
    match e.event? {
        pb::snapshot_progress::Event::Progress(p) => Some(Event::Progress(p)),
        pb::snapshot_progress::Event::Snapshot(s) => Some(Event::Done(s)),
    }
}
