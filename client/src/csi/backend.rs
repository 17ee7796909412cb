//! The plugin's side of `berthd`: one [`Session`], opened lazily and opened
//! again after the connection drops (a `berth` command's channel never
//! reconnects, a plugin runs for months), plus a short-lived cache of the
//! services the credential may use.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::{Code, Status};

use crate::connect::ConnectError;
use crate::pb;
use crate::session::{Session, SessionError, SessionOptions};

/// How long the list of services is reused before it is asked again.
const SERVICES_TTL: Duration = Duration::from_secs(30);

/// Whether a session error may go away by itself (the controller is down or
/// restarting), as opposed to trust, credential or config problems.
pub fn is_transient(e: &SessionError) -> bool {
    matches!(
        e,
        SessionError::Connect(
            ConnectError::Unreachable { .. }
                | ConnectError::Tls { .. }
                | ConnectError::Channel { .. }
        )
    ) || matches!(e, SessionError::Status(s) if s.code() == Code::Unavailable)
}

/// A session error as a CSI status: Berth's own statuses pass through,
/// everything else says the controller cannot be used right now.
pub fn session_status(e: SessionError) -> Status {
    match e {
        SessionError::Status(s) => s,
        SessionError::NoService => {
            Status::permission_denied("the plugin's credential may use no Berth service")
        }
        SessionError::SeveralServices(list) => Status::invalid_argument(format!(
            "the plugin's credential may use several Berth services ({list}); \
             set the StorageClass parameter `service`"
        )),
        other => Status::unavailable(format!("berthd: {other}")),
    }
}

/// The session with berthd and what it knows about services.
pub struct Backend {
    opts: SessionOptions,
    session: tokio::sync::Mutex<Option<Session>>,
    services: Mutex<Option<(Instant, Vec<pb::Service>)>>,
    busy: Mutex<HashSet<String>>,
}

/// Marks one volume or snapshot busy while an operation on it runs; a
/// second operation on it meanwhile is ABORTED, as the CSI spec asks.
pub struct Busy<'a> {
    backend: &'a Backend,
    key: String,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.backend.busy.lock() {
            set.remove(&self.key);
        }
    }
}

impl Backend {
    /// A backend that opens its session on first use.
    pub fn new(mut opts: SessionOptions) -> Self {
        // A daemon never asks a person, and each attempt is quick: the
        // orchestrator retries.
        opts.may_prompt = false;
        opts.wait = Duration::ZERO;
        Self {
            opts,
            session: tokio::sync::Mutex::new(None),
            services: Mutex::new(None),
            busy: Mutex::new(HashSet::new()),
        }
    }

    /// The open session, opening one if there is none.
    pub async fn open(&self) -> Result<Session, SessionError> {
        let mut slot = self.session.lock().await;
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        let s = Session::open(&self.opts).await?;
        *slot = Some(s.clone());
        Ok(s)
    }

    /// Forgets the session (its connection failed) and the service cache.
    pub async fn reset(&self) {
        *self.session.lock().await = None;
        if let Ok(mut cache) = self.services.lock() {
            *cache = None;
        }
    }

    /// Runs `f` with the session; when the connection has failed, opens a
    /// new session and runs it once more (every CSI call is idempotent).
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: Fn(Session) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let session = self.open().await.map_err(session_status)?;
        match f(session).await {
            Err(status) if status.code() == Code::Unavailable => {
                self.reset().await;
                let session = self.open().await.map_err(session_status)?;
                f(session).await
            }
            other => other,
        }
    }

    /// The services the credential may use (cached for a short while).
    pub async fn services(&self) -> Result<Vec<pb::Service>, Status> {
        if let Ok(cache) = self.services.lock() {
            if let Some((at, list)) = cache.as_ref() {
                if at.elapsed() < SERVICES_TTL {
                    return Ok(list.clone());
                }
            }
        }
        let list = self
            .call(|s| async move { s.services().await.map_err(session_status) })
            .await?;
        if let Ok(mut cache) = self.services.lock() {
            *cache = Some((Instant::now(), list.clone()));
        }
        Ok(list)
    }

    /// What the catalogue says about `service`, if the credential sees it.
    pub async fn service(&self, name: &str) -> Result<Option<pb::Service>, Status> {
        Ok(self.services().await?.into_iter().find(|s| s.name == name))
    }

    /// The service named, else the only one the credential may use. A
    /// named service is never replaced by another: berthd decides.
    pub async fn choose_service(&self, named: Option<&str>) -> Result<String, Status> {
        if let Some(name) = named {
            if name.is_empty() {
                return Err(Status::invalid_argument(
                    "the StorageClass parameter `service` is empty",
                ));
            }
            return Ok(name.to_owned());
        }
        let services = self.services().await?;
        match services.as_slice() {
            [only] => Ok(only.name.clone()),
            [] => Err(session_status(SessionError::NoService)),
            several => Err(session_status(SessionError::SeveralServices(
                several
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            ))),
        }
    }

    /// Marks `key` busy, or says ABORTED when an operation on it runs.
    pub fn busy(&self, key: String) -> Result<Busy<'_>, Status> {
        let mut set = self
            .busy
            .lock()
            .map_err(|_| Status::internal("the plugin's operation table is poisoned"))?;
        if !set.insert(key.clone()) {
            return Err(Status::aborted(format!(
                "an operation on {key} is already in progress; retry later"
            )));
        }
        Ok(Busy { backend: self, key })
    }

    /// Whether berthd answers a call now.
    pub async fn ready(&self) -> bool {
        let probe = self.call(|s| async move {
            s.catalog()
                .list_services(pb::ListServicesRequest {})
                .await
                .map(|_| ())
        });
        matches!(
            tokio::time::timeout(Duration::from_secs(5), probe).await,
            Ok(Ok(()))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_operation_on_a_busy_object_is_aborted() {
        let backend = Backend::new(SessionOptions::default());
        let first = backend.busy("volume fs/a".into()).expect("free");
        let err = backend
            .busy("volume fs/a".into())
            .err()
            .expect("busy while the first runs");
        assert_eq!(err.code(), Code::Aborted);
        let _other = backend
            .busy("volume fs/b".into())
            .expect("another volume is free");
        drop(first);
        backend.busy("volume fs/a".into()).expect("free again");
    }

    #[test]
    fn session_errors_keep_berths_codes() {
        let denied = session_status(SessionError::Status(Status::permission_denied("no")));
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert_eq!(
            session_status(SessionError::NoService).code(),
            Code::PermissionDenied
        );
        assert_eq!(
            session_status(SessionError::SeveralServices("a, b".into())).code(),
            Code::InvalidArgument
        );
        assert_eq!(
            session_status(SessionError::EmptyToken).code(),
            Code::Unavailable
        );
    }
}
