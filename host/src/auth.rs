//! Authentication, for the API and the console alike: bearer tokens with
//! two roles, and the console's session cookie and header. The cookie
//! holds a random session id, never a token; the sessions themselves are
//! kept in the store (see `http::sessions`).
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
//!
//! This module decides who a request comes from and whether its role
//! suffices; the API's middleware turns a refusal into its error answer
//! and the console's into a redirect to the sign-in form.

use axum::http::{header, HeaderMap, Method};
use sha2::{Digest, Sha256};
use std::path::Path;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// GET endpoints.
    Read,
    /// Everything.
    Admin,
}

impl Role {
    /// `read` or `admin` as a role.
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "read" => Some(Role::Read),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// `read` or `admin`.
    pub fn as_str(self) -> &'static str {
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
#[derive(Debug, Clone, PartialEq, Eq)]
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

    /// The role of the token named `name` and the binding of session `id`
    /// to that token's value (SHA-256 over the token's digest and the id,
    /// hex): a session records it at sign-in, and is refused once the
    /// token is gone or its value changed.
    pub fn binding(&self, name: &str, id: &str) -> Option<(Role, String)> {
        let entry = self.entries.iter().find(|e| e.name == name)?;
        let mut hasher = Sha256::new();
        hasher.update(entry.digest);
        hasher.update(id.as_bytes());
        Some((entry.role, format!("{:x}", hasher.finalize())))
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

/// The session cookie's name.
pub const COOKIE: &str = "tag_session";
/// The header state-changing calls authenticated by the cookie must carry.
pub const CONSOLE_HEADER: (&str, &str) = ("x-requested-with", "tag-console");

/// A new console session id: 256 bits from the operating system's random
/// source, as 64 hex digits.
pub fn new_session_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// What the store keeps of a session id: its SHA-256, hex.
pub fn session_digest(id: &str) -> String {
    format!("{:x}", Sha256::digest(id.as_bytes()))
}

/// The `Set-Cookie` value that holds session `id` for `max_age` seconds
/// (HttpOnly and SameSite=Strict: no script and no other site reads or
/// sends it; `Secure` when the console is reached over TLS).
pub fn session_cookie(id: &str, max_age: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}")
}

/// The `Set-Cookie` value that ends the console's session in the browser.
pub fn cleared_cookie(secure: bool) -> String {
    session_cookie("", 0, secure)
}

/// The session id in the request's session cookie, if any.
pub fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// The token of an `Authorization` value in the bearer scheme, whose name
/// is case-insensitive (`Bearer`, `bearer`, `BEARER`; RFC 9110 §11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once([' ', '\t'])?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The token of the request's `Authorization: Bearer` header, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
}

/// The console session id a request relies on: its session cookie when it
/// has no bearer token. A state-changing request authenticated by the
/// cookie must also carry the console's header (another site's page cannot
/// add it without a CORS preflight).
pub fn presented_session<'a>(method: &Method, headers: &'a HeaderMap) -> Option<&'a str> {
    if bearer(headers).is_some() {
        return None;
    }
    let (name, value) = CONSOLE_HEADER;
    let from_console = headers.get(name).is_some_and(|v| v == value);
    session_id(headers).filter(|_| from_console || needed(method, "") == Role::Read)
}

/// Whether the request presents a token at all (right or wrong): a bearer
/// token or a console session id.
pub fn presents_token(method: &Method, headers: &HeaderMap) -> bool {
    bearer(headers).is_some() || presented_session(method, headers).is_some()
}

/// The paths a `read` token may POST to: questions that change nothing.
const READ_POSTS: &[&str] = &["/api/v1/audiences/query"];

/// The role a request needs.
fn needed(method: &Method, path: &str) -> Role {
    let read_post = method == Method::POST && READ_POSTS.contains(&path);
    if method == Method::GET || method == Method::HEAD || read_post {
        Role::Read
    } else {
        Role::Admin
    }
}

/// Why a request was not let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No token, or one that is not ours (401).
    Unauthenticated,
    /// A valid token whose role is below what the request needs (403).
    Forbidden {
        /// The token's name.
        name: String,
        /// Its role.
        role: Role,
        /// The role the request needs.
        needs: Role,
    },
}

/// Who sends a request with `method` and `headers`: the bearer token's
/// name, else the token name and role of the console session it presents
/// (`session`, as the store resolved [`presented_session`]), or
/// `anonymous` when no token is configured.
pub fn authenticate(
    tokens: &Tokens,
    (method, path): (&Method, &str),
    headers: &HeaderMap,
    session: Option<&(String, Role)>,
) -> Result<Caller, Denied> {
    if !tokens.enabled() {
        return Ok(Caller("anonymous".into()));
    }
    let (name, role) = match bearer(headers) {
        Some(token) => tokens.identify(token),
        None => session.cloned(),
    }
    .ok_or(Denied::Unauthenticated)?;
    let needs = needed(method, path);
    if role < needs {
        return Err(Denied::Forbidden { name, role, needs });
    }
    Ok(Caller(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_token_may_ask_an_audience_query_and_nothing_else_by_post() {
        assert_eq!(needed(&Method::POST, "/api/v1/audiences/query"), Role::Read);
        assert_eq!(needed(&Method::PUT, "/api/v1/audiences/query"), Role::Admin);
        assert_eq!(needed(&Method::PUT, "/api/v1/audiences/vip"), Role::Admin);
        assert_eq!(needed(&Method::POST, "/api/v1/tags/trigger"), Role::Admin);
        assert_eq!(
            needed(&Method::GET, "/api/v1/audiences/vip/members"),
            Role::Read
        );
    }

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

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (header::HeaderName::from_static(k), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn the_bearer_header_or_the_console_cookie_authenticates_by_role() {
        let tokens = Tokens::parse(
            Some("ops:admin:0123456789abcdef-ops,viewer:read:0123456789abcdef-view"),
            None,
        )
        .unwrap();
        let who = |method: Method, pairs: &[(&'static str, &str)]| {
            authenticate(&tokens, (&method, "/api/v1/tasks"), &headers(pairs), None)
        };
        let bearer = [("authorization", "Bearer 0123456789abcdef-view")];
        assert_eq!(who(Method::GET, &bearer).unwrap().0, "viewer");
        assert_eq!(
            who(Method::POST, &bearer),
            Err(Denied::Forbidden {
                name: "viewer".into(),
                role: Role::Read,
                needs: Role::Admin
            })
        );
        assert_eq!(who(Method::GET, &[]), Err(Denied::Unauthenticated));
        let cookie = ("cookie", "a=b; tag_session=5e55");
        let get = headers(&[cookie]);
        assert_eq!(presented_session(&Method::GET, &get), Some("5e55"));
        // A state-changing call on the cookie alone could come from another site.
        assert_eq!(presented_session(&Method::POST, &get), None);
        let console = headers(&[cookie, ("x-requested-with", "tag-console")]);
        assert_eq!(presented_session(&Method::POST, &console), Some("5e55"));
        // The session as the store resolved it, never the cookie's value.
        let ops = ("ops".to_string(), Role::Admin);
        let by_session = authenticate(
            &tokens,
            (&Method::POST, "/api/v1/tasks"),
            &console,
            Some(&ops),
        );
        assert_eq!(by_session.unwrap().0, "ops");
        let token_as_cookie = headers(&[("cookie", "tag_session=0123456789abcdef-ops")]);
        assert_eq!(
            authenticate(
                &tokens,
                (&Method::GET, "/api/v1/tasks"),
                &token_as_cookie,
                None
            ),
            Err(Denied::Unauthenticated)
        );
        let open = Tokens::default();
        assert_eq!(
            authenticate(
                &open,
                (&Method::POST, "/api/v1/tasks"),
                &HeaderMap::new(),
                None
            )
            .unwrap()
            .0,
            "anonymous"
        );
    }

    #[test]
    fn session_ids_are_random_and_bound_to_the_token_value() {
        let (a, b) = (new_session_id().unwrap(), new_session_id().unwrap());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_ne!(session_digest(&a), a);
        let old = Tokens::parse(Some("ops:admin:0123456789abcdef-ops"), None).unwrap();
        let new = Tokens::parse(Some("ops:read:0123456789abcdef-new"), None).unwrap();
        let (role, bound) = old.binding("ops", &a).unwrap();
        assert_eq!(role, Role::Admin);
        assert_eq!(old.binding("ops", &a).unwrap().1, bound);
        assert_ne!(new.binding("ops", &a).unwrap().1, bound);
        assert_ne!(old.binding("ops", &b).unwrap().1, bound);
        assert!(old.binding("viewer", &a).is_none());
        let cookie = session_cookie(&a, 60, true);
        assert!(cookie.starts_with(&format!("tag_session={a}; HttpOnly; SameSite=Strict")));
        assert!(cookie.ends_with("Max-Age=60; Secure"), "{cookie}");
        assert!(!cleared_cookie(false).contains("Secure"));
    }
}
