//! Bearer-token authentication with two roles.
//!
//! Tokens come from `TAG_API_TOKENS` (comma-separated `name:role:token`)
//! and `--tokens-file` (one `name:role:token` a line, `#` comments), never
//! from a flag. `read` tokens may call GET endpoints; `admin` tokens may
//! also trigger, cancel, retry, change rules, reload plugins and transfer
//! tag ownership. `/health` (and `/metrics`) stay open. With no token
//! configured the API is open (`--env local` only; the other profiles
//! refuse to start without tokens).
//!
//! A presented token is compared with every configured one through their
//! SHA-256 digests, in time that depends on neither its content nor which
//! entry it matches. The token's name (never its value) goes into the
//! request as [`Caller`] for the audit trail.

use super::ApiError;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// GET endpoints.
    Read,
    /// Everything.
    Admin,
}

impl Role {
    fn parse(text: &str) -> Option<Role> {
        match text {
            "read" => Some(Role::Read),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }
}

/// One configured token (its value kept only as a digest).
#[derive(Clone)]
struct Entry {
    name: String,
    role: Role,
    digest: [u8; 32],
}

/// The configured tokens; empty means the API is open.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.entries.iter().map(|e| (&e.name, e.role)).collect();
        f.debug_struct("Tokens").field("entries", &names).finish()
    }
}

/// The caller of a request, once authenticated: the token's name, or
/// `anonymous` when the API is open.
#[derive(Debug, Clone)]
pub struct Caller(pub String);

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// Parses entries from the environment text and the file's text; every
    /// problem is listed (without any token value).
    pub fn parse(env: Option<&str>, file: Option<(&Path, &str)>) -> Result<Tokens, Vec<String>> {
        let mut entries = Vec::new();
        let mut errors = Vec::new();
        let env_items = env.into_iter().flat_map(|t| t.split(','));
        let sources = env_items
            .enumerate()
            .map(|(i, item)| (format!("TAG_API_TOKENS entry {}", i + 1), item))
            .chain(file.into_iter().flat_map(|(path, text)| {
                text.lines()
                    .enumerate()
                    .map(move |(i, line)| (format!("{} line {}", path.display(), i + 1), line))
            }));
        for (place, item) in sources {
            let item = item.trim();
            if item.is_empty() || item.starts_with('#') {
                continue;
            }
            match Self::entry(item) {
                Ok(entry) if entries.iter().any(|e: &Entry| e.name == entry.name) => {
                    errors.push(format!("{place}: token name {} is used twice", entry.name))
                }
                Ok(entry) => entries.push(entry),
                Err(why) => errors.push(format!("{place}: {why}")),
            }
        }
        if errors.is_empty() {
            Ok(Tokens { entries })
        } else {
            Err(errors)
        }
    }

    fn entry(item: &str) -> Result<Entry, String> {
        let mut parts = item.splitn(3, ':');
        let (Some(name), Some(role), Some(token)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err("expected name:role:token".into());
        };
        let role = Role::parse(role.trim())
            .ok_or_else(|| format!("role of {name} must be read or admin"))?;
        let token = token.trim();
        if name.trim().is_empty() || token.len() < 16 {
            return Err(format!(
                "{name}: a name and a token of at least 16 characters are needed"
            ));
        }
        Ok(Entry {
            name: name.trim().to_string(),
            role,
            digest: digest(token),
        })
    }

    /// Whether any token is configured.
    pub fn enabled(&self) -> bool {
        !self.entries.is_empty()
    }

    /// The name and role of `token`, if it is one of ours.
    pub fn identify(&self, token: &str) -> Option<(String, Role)> {
        self.find(token).map(|e| (e.name.clone(), e.role))
    }

    /// The entry `token` belongs to, compared in constant time.
    fn find(&self, token: &str) -> Option<&Entry> {
        let presented = digest(token);
        let mut found = None;
        for entry in &self.entries {
            let diff = entry
                .digest
                .iter()
                .zip(presented)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(entry);
            }
        }
        found
    }
}

/// Paths anyone may call (the API's description too: clients read it to
/// learn how to authenticate). The console's pages check their session
/// themselves (they send the browser to the sign-in form).
fn open_path(path: &str) -> bool {
    path == "/health"
        || path == "/metrics"
        || path == super::openapi::PATH
        || crate::console::is_console_path(path)
}

/// The token a request presents: `Authorization: Bearer`, or the console's
/// session cookie. A state-changing request authenticated by the cookie
/// must also carry the console's header (another site's page cannot add
/// it without a CORS preflight).
fn presented(request: &Request) -> Option<&str> {
    let headers = request.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if bearer.is_some() {
        return bearer;
    }
    let (name, value) = crate::console::CONSOLE_HEADER;
    let from_console = headers.get(name).is_some_and(|v| v == value);
    crate::console::session_token(headers)
        .filter(|_| from_console || needed(request.method()) == Role::Read)
}

/// The role a request needs.
fn needed(method: &Method) -> Role {
    if method == Method::GET || method == Method::HEAD {
        Role::Read
    } else {
        Role::Admin
    }
}

/// The middleware: 401 without a valid token, 403 without the role.
pub async fn require(State(tokens): State<Arc<Tokens>>, request: Request, next: Next) -> Response {
    if !tokens.enabled() || open_path(request.uri().path()) {
        return with_caller(Caller("anonymous".into()), request, next).await;
    }
    let Some(entry) = presented(&request).and_then(|t| tokens.find(t)) else {
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or invalid API token: send Authorization: Bearer <token>",
            "未授权：缺少或无效的API令牌",
        )
        .into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Bearer".parse().expect("header value"),
        );
        return response;
    };
    let need = needed(request.method());
    if entry.role < need {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "token {} has the role {}; this request needs {}",
                entry.name,
                entry.role.as_str(),
                need.as_str()
            ),
            "权限不足",
        )
        .into_response();
    }
    with_caller(Caller(entry.name.clone()), request, next).await
}

/// Runs the request as `caller`, who is also noted on the response (for
/// the access log).
async fn with_caller(caller: Caller, mut request: Request, next: Next) -> Response {
    request.extensions_mut().insert(caller.clone());
    let mut response = next.run(request).await;
    response.extensions_mut().insert(caller);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_from_both_sources_and_problems_are_listed() {
        let file =
            "# ops team\nops:admin:0123456789abcdef-ops\n\nviewer:read:0123456789abcdef-view\n";
        let tokens = Tokens::parse(
            Some("ci:admin:0123456789abcdef-ci"),
            Some((Path::new("tokens"), file)),
        )
        .unwrap();
        assert_eq!(tokens.entries.len(), 3);
        assert_eq!(
            tokens.find("0123456789abcdef-view").unwrap().role,
            Role::Read
        );
        assert_eq!(tokens.find("0123456789abcdef-ops").unwrap().name, "ops");
        assert!(tokens.find("0123456789abcdef-nope").is_none());

        let errors =
            Tokens::parse(Some("a:root:0123456789abcdef,b:read:short,c"), None).unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors.iter().all(|e| !e.contains("0123456789abcdef")),
            "{errors:?}"
        );
        let twice = Tokens::parse(
            Some("a:read:0123456789abcdef1,a:admin:0123456789abcdef2"),
            None,
        );
        assert!(twice.unwrap_err()[0].contains("used twice"));
    }
}
