//! Who may do what over HTTP (SPEC §8).
//!
//! - **Roles.** The CRM's token (`api_token_file`) reads and writes contacts and companies
//!   and reads account status. The operator's token (`admin_token_file`) may do all that
//!   and everything that changes how accounts sync: grants, approve, restore, preview,
//!   sync-now, and the dashboard. A bearer token of the wrong role gets 403 naming the role.
//! - **Dashboard sessions.** `POST /login` exchanges the operator token for a session
//!   cookie (HttpOnly, SameSite=Strict, Secure under TLS). Every dashboard action is a
//!   POST form carrying the session's CSRF token.
//! - **Host allowlist.** Every route checks the `Host` header against the listen address,
//!   `localhost`, `127.0.0.1`, `[::1]` and `allowed_hosts`, so a hostile page cannot reach
//!   the daemon by DNS rebinding; a POST whose `Origin` is another site is refused too.
//! - **`/metrics`** answers loopback peers, and others only with `metrics_token_file`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest, ResponseError};
use futures_util::future::{ready, Ready};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use super::{ApiError, ApiState};

/// Name of the dashboard's session cookie.
pub const SESSION_COOKIE: &str = "contact_sync_session";
/// A session ends after this long, whatever its use.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// At most this many dashboard sessions at once; a new login ends the oldest.
pub const MAX_SESSIONS: usize = 16;

/// The role a bearer token or session carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `api_token_file`: contacts, companies, account status.
    Crm,
    /// `admin_token_file`: everything.
    Operator,
}

/// The tokens and the dashboard sessions.
pub struct Auth {
    crm: Option<SecretString>,
    operator: Option<SecretString>,
    metrics: Option<SecretString>,
    /// Cookies get `Secure` when the API is served over TLS.
    pub tls: bool,
    sessions: Mutex<HashMap<String, Session>>,
}

/// A logged-in dashboard session.
#[derive(Clone)]
pub struct Session {
    pub id: String,
    /// The token every dashboard form must echo.
    pub csrf: String,
    created: Instant,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("crm", &self.crm.is_some())
            .field("operator", &self.operator.is_some())
            .field("metrics", &self.metrics.is_some())
            .finish()
    }
}

fn eq(given: &str, expected: &Option<SecretString>) -> bool {
    expected.as_ref().is_some_and(|t| {
        let t = t.expose_secret().as_bytes();
        !t.is_empty() && bool::from(given.as_bytes().ct_eq(t))
    })
}

fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

impl Auth {
    pub fn new(
        crm: Option<SecretString>,
        operator: Option<SecretString>,
        metrics: Option<SecretString>,
        tls: bool,
    ) -> Auth {
        Auth {
            crm,
            operator,
            metrics,
            tls,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// The role of a bearer token; the operator's token is checked first.
    pub fn role_of(&self, token: &str) -> Option<Role> {
        if eq(token, &self.operator) {
            Some(Role::Operator)
        } else if eq(token, &self.crm) {
            Some(Role::Crm)
        } else {
            None
        }
    }

    /// The role of the request's `Authorization: Bearer` header.
    pub fn bearer_role(&self, req: &HttpRequest) -> Option<Role> {
        bearer(req).and_then(|t| self.role_of(t))
    }

    /// Whether the request carries the metrics token.
    pub fn metrics_token(&self, req: &HttpRequest) -> bool {
        bearer(req).is_some_and(|t| eq(t, &self.metrics))
    }

    /// Opens a dashboard session for a correct operator token.
    pub fn login(&self, token: &str) -> Option<Session> {
        if self.role_of(token) != Some(Role::Operator) {
            return None;
        }
        let s = Session {
            id: crate::secrets::random_hex(32),
            csrf: crate::secrets::random_hex(32),
            created: Instant::now(),
        };
        let mut map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| s.created.elapsed() < SESSION_TTL);
        if map.len() >= MAX_SESSIONS {
            // Only the operator can log in, so this bounds memory without letting anyone
            // else end a session.
            if let Some(oldest) = map.values().min_by_key(|s| s.created).map(|s| s.id.clone()) {
                map.remove(&oldest);
            }
        }
        map.insert(s.id.clone(), s.clone());
        Some(s)
    }

    /// The live session of the request's cookie.
    pub fn session(&self, req: &HttpRequest) -> Option<Session> {
        let id = cookie_value(req, SESSION_COOKIE)?;
        let map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&id)
            .filter(|s| s.created.elapsed() < SESSION_TTL)
            .cloned()
    }

    pub fn logout(&self, id: &str) {
        let mut map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(id);
    }

    /// The `Set-Cookie` value of a session (or, with `None`, one that clears it).
    pub fn session_cookie(&self, s: Option<&Session>) -> String {
        let secure = if self.tls { "; Secure" } else { "" };
        match s {
            Some(s) => format!(
                "{SESSION_COOKIE}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
                s.id,
                SESSION_TTL.as_secs()
            ),
            None => {
                format!("{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{secure}")
            }
        }
    }
}

/// The value of a cookie of the request (actix-web's cookie feature is not built in).
pub fn cookie_value(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Checks a form's CSRF token against the session's.
pub fn csrf_ok(session: &Session, given: &str) -> bool {
    !given.is_empty() && bool::from(given.as_bytes().ct_eq(session.csrf.as_bytes()))
}

/// Extractor for operator-only API handlers: the `/api/v1` middleware stored the bearer's
/// role; anything but the operator's gets 403 naming the role needed.
pub struct Operator;

impl FromRequest for Operator {
    type Error = ApiError;
    type Future = Ready<Result<Operator, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(match req.extensions().get::<Role>() {
            Some(Role::Operator) => Ok(Operator),
            _ => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "This action needs the operator role: present the operator token (admin_token_file). The CRM token (api_token_file) may only read and write contacts and companies and read account status.",
            )),
        })
    }
}

/// The `/api/v1` gate: no or unknown token is 401; otherwise the role goes into the
/// request's extensions for [`Operator`].
pub async fn api_gate<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let role = req
        .app_data::<web::Data<ApiState>>()
        .and_then(|st| st.auth.bearer_role(req.request()));
    match role {
        Some(role) => {
            req.extensions_mut().insert(role);
            Ok(next.call(req).await?.map_into_left_body())
        }
        None => {
            let resp = ApiError::new(StatusCode::UNAUTHORIZED, "Missing or wrong bearer token.")
                .error_response()
                .map_into_right_body();
            let (r, _) = req.into_parts();
            Ok(ServiceResponse::new(r, resp))
        }
    }
}

/// The host part of a `Host` value (`name`, `name:port`, `[v6]`, `[v6]:port`), lowercased.
fn host_name(value: &str) -> Option<String> {
    let v = value.trim();
    if let Some(rest) = v.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return Some(ip.to_ascii_lowercase());
    }
    let name = match v.rsplit_once(':') {
        Some((n, p)) if is_port(p) => n,
        Some(_) => return None,
        None => v,
    };
    (!name.is_empty()).then(|| name.to_ascii_lowercase())
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// Whether a `Host` value names this daemon: the listen address, `localhost`, `127.0.0.1`,
/// `[::1]`, or one of `allowed_hosts` (compared by name; a port, if any, is not).
pub fn host_allowed(value: &str, listen: SocketAddr, allowed: &[String]) -> bool {
    let Some(name) = host_name(value) else {
        return false;
    };
    if matches!(name.as_str(), "localhost" | "127.0.0.1" | "::1") {
        return true;
    }
    if !listen.ip().is_unspecified() && name == listen.ip().to_string() {
        return true;
    }
    allowed
        .iter()
        .filter_map(|a| host_name(a))
        .any(|a| a == name)
}

fn refuse<B>(
    req: ServiceRequest,
    status: StatusCode,
    message: String,
) -> ServiceResponse<EitherBody<B>> {
    tracing::warn!(path = %req.path(), %status, "{message}");
    let resp = ApiError::new(status, message)
        .error_response()
        .map_into_right_body();
    let (r, _) = req.into_parts();
    ServiceResponse::new(r, resp)
}

/// Every route: the `Host` header must name this daemon, and a request that changes
/// something (not GET/HEAD) must not come from another site's page (`Origin`).
pub async fn host_guard<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let Some(st) = req.app_data::<web::Data<ApiState>>().cloned() else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let config = st.rt.config();
    let d = &config.daemon;
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let Some(host) = host else {
        return Ok(refuse(
            req,
            StatusCode::MISDIRECTED_REQUEST,
            "Refused: the request has no Host header.".into(),
        ));
    };
    if !host_allowed(&host, d.listen, &d.allowed_hosts) {
        return Ok(refuse(
            req,
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "Refused: Host {host:?} is not one this daemon answers to (its listen address, localhost, 127.0.0.1, [::1]); add the name to [daemon] allowed_hosts if it is yours."
            ),
        ));
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string);
        if let Some(origin) = origin {
            let host_of = url::Url::parse(&origin).ok().and_then(|u| {
                u.host_str()
                    .map(|h| format!("{h}:{}", u.port_or_known_default().unwrap_or(0)))
            });
            let ok = host_of.is_some_and(|h| host_allowed(&h, d.listen, &d.allowed_hosts));
            if !ok {
                return Ok(refuse(
                    req,
                    StatusCode::FORBIDDEN,
                    format!("Refused: a page from {origin:?} may not send requests here."),
                ));
            }
        }
    }
    let mut res = next.call(req).await?;
    // No page of ours may be framed by another site's (clickjacking the dashboard).
    let h = res.headers_mut();
    h.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    Ok(res.map_into_left_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen() -> SocketAddr {
        "127.0.0.1:8631".parse().unwrap()
    }

    #[test]
    fn host_allowlist_accepts_loopback_names_and_configured_hosts_only() {
        let extra = vec!["sync.example.com".to_string()];
        for ok in [
            "localhost",
            "localhost:8631",
            "127.0.0.1:8631",
            "[::1]:8631",
            "[::1]",
            "LOCALHOST:1",
            "sync.example.com:443",
        ] {
            assert!(host_allowed(ok, listen(), &extra), "{ok}");
        }
        for bad in [
            "evil.example:8631",
            "localhost.evil.example",
            "127.0.0.1.nip.io:8631",
            "",
            "localhost:80:80",
            "[::1]x",
            "sync.example.com.evil",
        ] {
            assert!(!host_allowed(bad, listen(), &extra), "{bad}");
        }
        let lan: SocketAddr = "192.168.1.5:8631".parse().unwrap();
        assert!(host_allowed("192.168.1.5:8631", lan, &[]));
        let any: SocketAddr = "0.0.0.0:8631".parse().unwrap();
        assert!(!host_allowed("0.0.0.0:8631", any, &[]));
    }

    #[test]
    fn tokens_map_to_roles_and_sessions_need_the_operator_token() {
        let a = Auth::new(
            Some(SecretString::from("crm-token".to_string())),
            Some(SecretString::from("op-token".to_string())),
            None,
            false,
        );
        assert_eq!(a.role_of("crm-token"), Some(Role::Crm));
        assert_eq!(a.role_of("op-token"), Some(Role::Operator));
        assert_eq!(a.role_of("op-toke"), None);
        assert_eq!(a.role_of(""), None);
        assert!(a.login("crm-token").is_none());
        let s = a.login("op-token").unwrap();
        assert!(csrf_ok(&s, &s.csrf));
        assert!(!csrf_ok(&s, ""));
        assert!(!csrf_ok(&s, &s.id));
        let c = a.session_cookie(Some(&s));
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && !c.contains("Secure"));
        let tls = Auth::new(None, None, None, true);
        assert!(tls.session_cookie(Some(&s)).contains("; Secure"));
        // No operator token configured: no login at all.
        assert!(Auth::new(None, None, None, false).login("").is_none());
    }
}
