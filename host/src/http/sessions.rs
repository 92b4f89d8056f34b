//! The console's sessions, which the API accepts beside bearer tokens.
//!
//! A sign-in with a valid token opens a session in the store: a random id
//! (256 bits from the OS) goes into the browser's cookie, and the store
//! keeps only its SHA-256, with the token's name and role, the binding to
//! the token's value, and when it was opened and ends. Every process on the
//! store sees the same sessions, so a sign-out anywhere ends a session
//! everywhere. Each use checks the session against this process's tokens:
//! a token removed or replaced ends the sessions opened with it, and a role
//! lowered since the sign-in applies at once. Expired sessions are refused
//! and deleted when presented, and all of them at each sign-in.

use super::{ApiError, AppState};
use crate::auth::{self, Role};
use crate::store::ConsoleSession;
use axum::http::{HeaderMap, Method};

/// How the console's sessions are made.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How long a session lasts, in seconds.
    pub lifetime_secs: u64,
    /// Whether its cookie is `Secure` (sent over HTTPS only).
    pub secure: bool,
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Opens a session for `token`: the `Set-Cookie` value that hands it to
/// the browser ([`ApiError::InvalidToken`] if the token is not ours).
pub async fn open(state: &AppState, token: &str) -> Result<String, ApiError> {
    let (name, role) = state.tokens.identify(token).ok_or(ApiError::InvalidToken)?;
    let id = auth::new_session_id()
        .map_err(|e| ApiError::Internal(format!("no random session id: {e}")))?;
    let (_, binding) = state
        .tokens
        .binding(&name, &id)
        .ok_or(ApiError::InvalidToken)?;
    let settings = state.sessions;
    let now = unix_now();
    let session = ConsoleSession {
        id_digest: auth::session_digest(&id),
        token_name: name,
        role: role.as_str().to_string(),
        binding,
        created_at: now,
        expires_at: now.saturating_add_unsigned(settings.lifetime_secs),
    };
    state
        .blocking(move |store| {
            store.purge_sessions(now)?;
            store.create_session(&session)
        })
        .await?;
    Ok(auth::session_cookie(
        &id,
        settings.lifetime_secs,
        settings.secure,
    ))
}

/// Who session `id` stands for: the token's name and the lower of its role
/// at sign-in and now. `None` when the store has no such session, it
/// expired, or its token is no longer configured here with the same value.
pub async fn resolve(state: &AppState, id: &str) -> Result<Option<(String, Role)>, ApiError> {
    let digest = auth::session_digest(id);
    let now = unix_now();
    let found = state
        .blocking(move |store| store.find_session(&digest, now))
        .await?;
    let Some(session) = found else {
        return Ok(None);
    };
    let Some((role, binding)) = state.tokens.binding(&session.token_name, id) else {
        return Ok(None);
    };
    let Some(opened) = Role::parse(&session.role) else {
        return Ok(None);
    };
    if binding != session.binding {
        return Ok(None);
    }
    Ok(Some((session.token_name, role.min(opened))))
}

/// The session an API request authenticates with (see
/// [`auth::presented_session`]), resolved; `None` without one.
pub async fn of_request(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Option<(String, Role)>, ApiError> {
    match auth::presented_session(method, headers) {
        Some(id) if state.tokens.enabled() => resolve(state, id).await,
        _ => Ok(None),
    }
}

/// Ends session `id` in the store (for every process on it).
pub async fn close(state: &AppState, id: &str) -> Result<(), ApiError> {
    let digest = auth::session_digest(id);
    state
        .blocking(move |store| store.delete_session(&digest))
        .await
        .map(drop)
}
