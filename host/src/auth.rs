//! Authentication, for the API and the console alike: bearer tokens with
//! two roles, and the console's session cookie and header.
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
    fn parse(text: &str) -> Option<Role> {
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

/// The `Set-Cookie` value that stores `token` as the console's session
/// (HttpOnly and SameSite=Strict: no script and no other site reads or
/// sends it; twelve hours).
pub fn session_cookie(token: &str) -> String {
    format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200")
}

/// The `Set-Cookie` value that ends the console's session.
pub fn cleared_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

/// Whether `token` can be stored in the session cookie as it is: one of
/// ours, and nothing that would end or split the cookie's value.
pub fn cookie_safe(tokens: &Tokens, token: &str) -> bool {
    tokens.identify(token).is_some()
        && token
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
}

/// The token in the request's session cookie, if any.
pub fn session_token(headers: &HeaderMap) -> Option<&str> {
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

/// The token a request presents: `Authorization: Bearer`, or the console's
/// session cookie. A state-changing request authenticated by the cookie
/// must also carry the console's header (another site's page cannot add
/// it without a CORS preflight).
fn presented<'a>(method: &Method, headers: &'a HeaderMap) -> Option<&'a str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    if bearer.is_some() {
        return bearer;
    }
    let (name, value) = CONSOLE_HEADER;
    let from_console = headers.get(name).is_some_and(|v| v == value);
    session_token(headers).filter(|_| from_console || needed(method) == Role::Read)
}

/// Whether the request presents a token at all (right or wrong).
pub fn presents_token(method: &Method, headers: &HeaderMap) -> bool {
    presented(method, headers).is_some()
}

/// The role a request needs.
fn needed(method: &Method) -> Role {
    if method == Method::GET || method == Method::HEAD {
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

/// Who sends a request with `method` and `headers`: the token's name, or
/// `anonymous` when no token is configured.
pub fn authenticate(
    tokens: &Tokens,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Caller, Denied> {
    if !tokens.enabled() {
        return Ok(Caller("anonymous".into()));
    }
    let entry = presented(method, headers)
        .and_then(|t| tokens.find(t))
        .ok_or(Denied::Unauthenticated)?;
    let needs = needed(method);
    if entry.role < needs {
        return Err(Denied::Forbidden {
            name: entry.name.clone(),
            role: entry.role,
            needs,
        });
    }
    Ok(Caller(entry.name.clone()))
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
            authenticate(&tokens, &method, &headers(pairs))
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
        let cookie = ("cookie", "a=b; tag_session=0123456789abcdef-ops");
        assert_eq!(who(Method::GET, &[cookie]).unwrap().0, "ops");
        // A state-changing call on the cookie alone could come from another site.
        assert_eq!(who(Method::POST, &[cookie]), Err(Denied::Unauthenticated));
        let console = [cookie, ("x-requested-with", "tag-console")];
        assert_eq!(who(Method::POST, &console).unwrap().0, "ops");
        let open = Tokens::default();
        assert_eq!(
            authenticate(&open, &Method::POST, &HeaderMap::new())
                .unwrap()
                .0,
            "anonymous"
        );
        assert!(!cookie_safe(&tokens, "0123456789abcdef-nope"));
        assert!(session_cookie("t").starts_with("tag_session=t; HttpOnly; SameSite=Strict"));
    }
}
