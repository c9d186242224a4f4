//! `/mcp`: the MCP gateway (`bulwark-mcp`) behind the same key check and in-flight
//! limit as `/v1`, whose refusals are recorded in the audit log as on `/v1`. The key's
//! tool patterns (or `[mcp] anonymous_tools` on a gateway without keys) and the request
//! id travel to the gateway in the request's extensions.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;

use crate::auth::Caller;
use crate::state::AppState;

/// The `/mcp` routes, when the MCP gateway is on.
pub fn routes(state: &AppState) -> Option<Router<AppState>> {
    let mcp = state.mcp.clone()?;
    let anonymous = mcp.anonymous_tools.clone();
    Some(
        Router::new()
            .route_service("/mcp", mcp.service)
            .route_layer(axum::middleware::from_fn(
                move |req: Request, next: Next| {
                    let anonymous = anonymous.clone();
                    async move { with_caller(req, next, &anonymous).await }
                },
            ))
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                limit_calls,
            ))
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                crate::auth::require_key,
            ))
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                crate::route::record_mcp_refusal,
            )),
    )
}

/// `[server] max_in_flight` counts `/mcp` requests too (tool calls, lists, reads: every
/// POST); the `GET` stream a session-based client keeps open for notifications does not
/// take a slot, or a few idle clients would starve the gateway.
async fn limit_calls(state: axum::extract::State<AppState>, req: Request, next: Next) -> Response {
    if req.method() == http::Method::POST {
        crate::ops::limit_in_flight(state, req, next).await
    } else {
        next.run(req).await
    }
}

async fn with_caller(mut req: Request, next: Next, anonymous: &[String]) -> Response {
    let caller = req.extensions().get::<Caller>().cloned();
    let key = caller.as_ref().and_then(|c| c.0.clone());
    let caller = bulwark_mcp::Caller {
        passport: caller.and_then(|c| c.1),
        key_id: key.as_ref().map(|k| k.id().to_owned()),
        tenant: key.as_ref().map(|k| k.tenant().to_owned()),
        tools: match &key {
            Some(k) => k.record.spec.tools.clone(),
            None => anonymous.to_vec(),
        },
        request_id: req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned(),
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// What `/mcp` needs from the state.
#[derive(Clone)]
pub struct McpEdge {
    pub service: bulwark_mcp::HttpService,
    pub anonymous_tools: Vec<String>,
    /// The class of the tool results handed out, for chat requests that carry them.
    pub classes: std::sync::Arc<bulwark_mcp::classes::ResultClasses>,
    /// Each caller's placeholders from tool results, for its chat requests.
    pub pseudonyms: std::sync::Arc<bulwark_mcp::pseudonyms::Pseudonyms>,
}
