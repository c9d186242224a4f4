//! Who is calling: the API-key layer in front of `/v1/*`, and the admin API for keys.
//!
//! [`require_key`] runs before the body is read, so an unauthenticated client cannot
//! make the gateway parse anything. It puts a [`Caller`] in the request's extensions;
//! the router applies the key's models, classes, policy and limits. Keys are presented
//! as `Authorization: Bearer <key>` (OpenAI SDKs) or `x-api-key: <key>` (Anthropic
//! SDKs). Error messages never echo what was presented.
//!
//! `/admin/keys` is guarded by a separate admin token (`[keys] admin_token_env`), sent
//! only as `Authorization: Bearer <token>`, held only as its SHA-256 and compared in
//! constant time, checked before the body is read; without one, the admin API is off.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bulwark_api::{ApiError, ErrorKind};
use bulwark_keys::{AuthError, Key, KeySpec, KeysError};
use http::{header, HeaderMap, StatusCode};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::Error;
use crate::state::AppState;

/// The key a request was made with (`None` when keys are not in use), and the agent
/// passport it was made with, if it was: then the key is the one that issued it, and
/// the passport narrows what the key may do.
#[derive(Clone)]
pub struct Caller(
    pub Option<Arc<Key>>,
    pub Option<Arc<bulwark_passport::Passport>>,
);

impl Caller {
    /// For the audit record.
    pub fn passport_use(&self) -> Option<bulwark_audit::PassportUse> {
        self.1.as_ref().map(|p| bulwark_audit::PassportUse {
            id: p.id.clone(),
            chain: p.chain.clone(),
        })
    }
}

/// A passport presented as the key: the key that issued it, and the passport.
fn passport_caller(state: &AppState, token: &str) -> Result<Caller, Error> {
    use bulwark_passport::PassportError;
    let refuse = |code, message: String| {
        Error(ApiError::new(ErrorKind::Authentication, message).with_code(code))
    };
    let passport = state.passports.verify(token).map_err(|e| match e {
        PassportError::Revoked => refuse(
            bulwark_api::ErrorCode::PassportRevoked,
            "This passport has been revoked.".into(),
        ),
        e => refuse(
            bulwark_api::ErrorCode::InvalidPassport,
            format!("The passport is not valid: {e}."),
        ),
    })?;
    // Expired passports are refused here, before anything else is looked at.
    if let Err(PassportError::Expired) = passport.authorize(
        &bulwark_passport::Request::Tool(""),
        std::time::SystemTime::now(),
    ) {
        return Err(refuse(
            bulwark_api::ErrorCode::PassportExpired,
            "This passport has expired; ask its issuer for a new one.".into(),
        ));
    }
    let key = state.keys.live(&passport.key_id).ok_or_else(|| {
        refuse(
            bulwark_api::ErrorCode::PassportRevoked,
            "The key that issued this passport has been revoked.".into(),
        )
    })?;
    Ok(Caller(Some(key), Some(passport)))
}

/// What a client presented as its key, if anything.
fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?.trim();
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The token of `Authorization: Bearer <token>`, if that is what was sent.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

pub async fn require_key(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let token = presented(req.headers());
    let caller = match token.filter(|t| t.starts_with(bulwark_passport::PREFIX)) {
        Some(passport) => passport_caller(&state, passport),
        None => state.keys.authenticate(token).map(|key| Caller(key, None)).map_err(|e| match e {
            AuthError::Missing => Error(
                ApiError::new(
                    ErrorKind::Authentication,
                    "This gateway requires an API key: send `Authorization: Bearer <key>` (create one with `bulwark keys create NAME`).",
                )
                .with_code(bulwark_api::ErrorCode::MissingApiKey),
            ),
            AuthError::Invalid => Error(
                ApiError::new(
                    ErrorKind::Authentication,
                    "The API key is not valid: it is malformed, unknown or revoked.",
                )
                .with_code(bulwark_api::ErrorCode::InvalidApiKey),
            ),
        }),
    };
    match caller {
        Ok(caller) => {
            req.extensions_mut().insert(caller.clone());
            let mut resp = next.run(req).await;
            // For the audit record of a request refused after authentication.
            resp.extensions_mut().insert(caller);
            resp
        }
        Err(e) => e.into_response(),
    }
}

/// SHA-256 of the admin token, kept instead of the token.
pub type AdminTokenHash = [u8; 32];

pub fn hash_admin_token(token: &str) -> AdminTokenHash {
    Sha256::digest(token.as_bytes()).into()
}

fn check_admin(state: &AppState, headers: &HeaderMap) -> Result<(), Error> {
    let Some(want) = &state.admin_token else {
        return Err(Error(
            ApiError::new(
                ErrorKind::NotFound,
                "The admin API is off; set `admin_token_env` in [keys] to turn it on, or use `bulwark keys`.",
            )
            .with_code(bulwark_api::ErrorCode::AdminApiOff),
        ));
    };
    // Only `Authorization: Bearer`: the admin token is not an API key, and is not
    // taken from `x-api-key`.
    let got = bearer(headers).map(hash_admin_token);
    match got {
        Some(got) if bool::from(got.ct_eq(want)) => Ok(()),
        _ => Err(Error(
            ApiError::new(
                ErrorKind::Authentication,
                "The admin API needs the admin token: `Authorization: Bearer <token>`.",
            )
            .with_code(bulwark_api::ErrorCode::InvalidAdminToken),
        )),
    }
}

fn keys_error(e: KeysError) -> Error {
    match e {
        KeysError::NotFound(id) => Error(
            ApiError::new(ErrorKind::NotFound, format!("No key with id `{id}`."))
                .with_code(bulwark_api::ErrorCode::KeyNotFound),
        ),
        KeysError::Invalid(msg) => {
            Error(ApiError::invalid("key", msg).with_code(bulwark_api::ErrorCode::InvalidKeySpec))
        }
        e => {
            tracing::error!(error = %e, "key database failure");
            Error(
                ApiError::new(
                    ErrorKind::Internal,
                    "The key database failed; see the gateway's log.",
                )
                .with_code(bulwark_api::ErrorCode::KeyDatabaseError),
            )
        }
    }
}

/// A key spec is valid against this gateway's config: its policy and guard profile must
/// exist.
pub fn check_spec(state: &AppState, spec: &KeySpec) -> Result<(), Error> {
    if let Some(g) = &spec.guard {
        if !state.models.guard_profiles.contains_key(g) {
            return Err(Error(
                ApiError::invalid(
                    "guard",
                    format!("No guard profile named `{g}` is configured ([guard.profiles.NAME])."),
                )
                .with_code(bulwark_api::ErrorCode::InvalidKeySpec),
            ));
        }
    }
    if let Some(p) = &spec.policy {
        if !state.models.policies.contains_key(p) {
            let known: Vec<&str> = state.models.policies.keys().map(String::as_str).collect();
            return Err(Error(
                ApiError::invalid(
                    "policy",
                    format!(
                        "No policy named `{p}` is configured (known: {}).",
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                )
                .with_code(bulwark_api::ErrorCode::InvalidKeySpec),
            ));
        }
    }
    Ok(())
}

/// `POST /admin/keys`: the admin token is checked before a byte of the body is read;
/// the body is read as every other (size limit, deadline, JSON errors).
pub async fn create_key(State(state): State<AppState>, req: Request) -> Result<Response, Error> {
    check_admin(&state, req.headers())?;
    let crate::extract::JsonBody(body) = <crate::extract::JsonBody as axum::extract::FromRequest<
        AppState,
    >>::from_request(req, &state)
    .await?;
    let spec: KeySpec = serde_json::from_value(body).map_err(|e| {
        Error(
            ApiError::invalid("key", format!("The key spec is not valid: {e}."))
                .with_code(bulwark_api::ErrorCode::InvalidKeySpec),
        )
    })?;
    check_spec(&state, &spec)?;
    let (record, plaintext) = state.keys.create(&spec).map_err(keys_error)?;
    let mut body = serde_json::to_value(&record).unwrap_or_default();
    body["key"] = json!(plaintext);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub async fn list_keys(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    check_admin(&state, &headers)?;
    let keys = state.keys.list().map_err(keys_error)?;
    Ok(Json(json!({"object": "list", "data": keys})).into_response())
}

pub async fn show_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    check_admin(&state, &headers)?;
    let record = state.keys.get(&id).map_err(keys_error)?;
    let usage = state.keys.usage(&id).map_err(keys_error)?;
    let mut body = serde_json::to_value(&record).unwrap_or_default();
    body["usage"] = json!(usage);
    Ok(Json(body).into_response())
}

pub async fn revoke_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    check_admin(&state, &headers)?;
    let record = state.keys.revoke(&id).map_err(keys_error)?;
    Ok(Json(record).into_response())
}
