//! Sessions of the session-based revision (2025-11-25) and the calls in flight in
//! each, so that a client that closes its session (`DELETE /mcp`) has its calls
//! cancelled at once: upstream, and in the audit log as `cancelled`.
//!
//! Without this, rmcp's session worker lets a closed session's handlers run on for
//! up to five seconds (to drain their answers) before it cancels them, and a call
//! whose client has gone would end at the gateway's `call_timeout` and be recorded
//! as failed. The Python SDK, for one, sends its `notifications/cancelled` and its
//! `DELETE` together when it gives up, and the `DELETE` often arrives first: the
//! cancellation then finds no session to reach.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::{EventStore, ServerSseMessage};
use rmcp::transport::streamable_http_server::{RestoreOutcome, SessionId, SessionManager};
use tokio_util::sync::CancellationToken;

/// The session-id header of the session-based revision.
pub const SESSION_HEADER: &str = "mcp-session-id";

/// The sessions' tokens, each with the number of calls holding it. An entry lives
/// while a call of its session does, so sessions that end without a `DELETE`
/// leave nothing behind.
#[derive(Default)]
pub struct InFlight(Mutex<HashMap<Arc<str>, (CancellationToken, usize)>>);

impl InFlight {
    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, (CancellationToken, usize)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enters a call of session `id`: the token is cancelled when the session is
    /// closed while the call runs.
    pub fn enter(self: &Arc<Self>, id: &str) -> InSession {
        let mut open = self.open();
        let id: Arc<str> = open
            .get_key_value(id)
            .map_or_else(|| id.into(), |(id, _)| Arc::clone(id));
        let (token, calls) = open.entry(Arc::clone(&id)).or_default();
        *calls += 1;
        InSession {
            in_flight: Arc::clone(self),
            token: token.clone(),
            id,
        }
    }

    /// Cancels the calls in flight in session `id`. The token is cancelled while the
    /// entry is removed (under the lock), so a call that finds its token cancelled
    /// knows its entry is gone.
    pub fn close(&self, id: &str) {
        let mut open = self.open();
        if let Some((token, _)) = open.remove(id) {
            token.cancel();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.open().len()
    }
}

/// One call's hold on its session's token; dropping it ends the call.
pub struct InSession {
    in_flight: Arc<InFlight>,
    id: Arc<str>,
    pub token: CancellationToken,
}

impl Drop for InSession {
    fn drop(&mut self) {
        let mut open = self.in_flight.open();
        // A cancelled token: the session was closed and its entry removed; an entry
        // under the same id now is a later one, not this call's to count.
        if self.token.is_cancelled() {
            return;
        }
        if let Some((_, calls)) = open.get_mut(&self.id) {
            *calls -= 1;
            if *calls == 0 {
                open.remove(&self.id);
            }
        }
    }
}

/// rmcp's in-memory session manager, and on `DELETE` the session's calls cancelled
/// first.
pub struct Sessions {
    local: LocalSessionManager,
    in_flight: Arc<InFlight>,
}

impl Sessions {
    pub fn new(in_flight: Arc<InFlight>) -> Self {
        Self {
            local: LocalSessionManager::default(),
            in_flight,
        }
    }
}

impl SessionManager for Sessions {
    type Error = <LocalSessionManager as SessionManager>::Error;
    type Transport = <LocalSessionManager as SessionManager>::Transport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        self.local.create_session().await
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        self.local.initialize_session(id, message).await
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        self.local.has_session(id).await
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        self.in_flight.close(id);
        self.local.close_session(id).await
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<
        impl futures_util::Stream<Item = ServerSseMessage> + Send + Sync + 'static,
        Self::Error,
    > {
        self.local.create_stream(id, message).await
    }

    async fn accept_message(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), Self::Error> {
        self.local.accept_message(id, message).await
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<
        impl futures_util::Stream<Item = ServerSseMessage> + Send + Sync + 'static,
        Self::Error,
    > {
        self.local.create_standalone_stream(id).await
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<
        impl futures_util::Stream<Item = ServerSseMessage> + Send + Sync + 'static,
        Self::Error,
    > {
        self.local.resume(id, last_event_id).await
    }

    async fn restore_session(
        &self,
        id: SessionId,
    ) -> Result<RestoreOutcome<Self::Transport>, Self::Error> {
        self.local.restore_session(id).await
    }

    fn event_store(&self) -> Option<Arc<dyn EventStore>> {
        self.local.event_store()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_a_session_cancels_its_calls_and_only_its_own() {
        let in_flight = Arc::new(InFlight::default());
        let a1 = in_flight.enter("a");
        let a2 = in_flight.enter("a");
        let b = in_flight.enter("b");
        in_flight.close("a");
        assert!(a1.token.is_cancelled() && a2.token.is_cancelled());
        assert!(!b.token.is_cancelled());
        // The id reopened: a new token, and the old calls' ends do not touch it.
        let a3 = in_flight.enter("a");
        assert!(!a3.token.is_cancelled());
        drop((a1, a2));
        assert_eq!(in_flight.len(), 2);
        drop((a3, b));
        assert_eq!(in_flight.len(), 0, "ended calls leave nothing behind");
        in_flight.close("never-seen");
    }
}
