//! Scripted answers, for tests of a client's HTTP behaviour: a [`Script`] replaces the
//! provider's own answer to the next matching API requests with a given status, headers
//! and body, or cuts the provider's own body short. Scripted answers are logged like any
//! other, count against the concurrency quota, and wait at gates.
//!
//! With the detailed log on ([`super::Sim::set_detailed_log`]), the request log also keeps
//! each request's bearer token and body, so a test can check what a client sent.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::{Req, Resp};

/// A scripted answer to the API requests that match it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Script {
    /// Method to match; empty: any.
    pub method: String,
    /// Text the path must contain; empty: any path.
    pub path: String,
    /// Query parameters the request must carry, with these values.
    pub query: Vec<(String, String)>,
    /// Query parameters the request must carry, with any value.
    pub with: Vec<String>,
    /// Query parameters the request must not carry.
    pub without: Vec<String>,
    /// Text the request body must contain; empty: any body.
    pub body_contains: String,
    /// How many matching requests this answers; 0: every one.
    pub times: u32,
    /// The status to answer; `None`: the provider's own answer's status.
    pub status: Option<u16>,
    /// Headers added to the answer.
    pub headers: Vec<(String, String)>,
    pub body: ScriptBody,
    /// Send only part of the body, then close the connection; `Content-Length` announces
    /// the whole body.
    pub cut: Option<Cut>,
}

/// The body of a scripted answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScriptBody {
    /// The provider's own answer's body (the request is served as usual).
    #[default]
    Own,
    /// The first half of the provider's own body, as a complete answer: JSON that stops
    /// half-way.
    OwnHalf,
    Json(Value),
    Text(String),
    /// This many spaces.
    Filler(usize),
}

/// How much of a body is sent before the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cut {
    Bytes(usize),
    Half,
}

impl Script {
    /// A script for every request whose path contains `path`.
    pub fn on(path: &str) -> Script {
        Script {
            path: path.into(),
            ..Script::default()
        }
    }

    pub fn method(mut self, m: &str) -> Self {
        self.method = m.to_ascii_uppercase();
        self
    }

    pub fn query(mut self, k: &str, v: &str) -> Self {
        self.query.push((k.into(), v.into()));
        self
    }

    pub fn with(mut self, k: &str) -> Self {
        self.with.push(k.into());
        self
    }

    /// Only requests whose body contains `text`.
    pub fn body_contains(mut self, text: &str) -> Self {
        self.body_contains = text.into();
        self
    }

    pub fn without(mut self, k: &str) -> Self {
        self.without.push(k.into());
        self
    }

    /// Answers only the next `n` matching requests.
    pub fn times(mut self, n: u32) -> Self {
        self.times = n;
        self
    }

    pub fn status(mut self, s: u16) -> Self {
        self.status = Some(s);
        self
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }

    pub fn json(mut self, status: u16, v: Value) -> Self {
        self.status = Some(status);
        self.body = ScriptBody::Json(v);
        self
    }

    pub fn text(mut self, status: u16, s: &str) -> Self {
        self.status = Some(status);
        self.body = ScriptBody::Text(s.into());
        self
    }

    pub fn body(mut self, b: ScriptBody) -> Self {
        self.body = b;
        self
    }

    pub fn cut(mut self, c: Cut) -> Self {
        self.cut = Some(c);
        self
    }

    pub(crate) fn matches(&self, r: &Req) -> bool {
        (self.method.is_empty() || self.method.eq_ignore_ascii_case(&r.method))
            && r.path.contains(self.path.as_str())
            && self.query.iter().all(|(k, v)| r.q(k) == Some(v.as_str()))
            && self.with.iter().all(|k| r.q(k).is_some())
            && self.without.iter().all(|k| r.q(k).is_none())
            && (self.body_contains.is_empty()
                || String::from_utf8_lossy(&r.body).contains(self.body_contains.as_str()))
    }

    /// Whether the provider must serve the request (the answer uses its body or status).
    pub(crate) fn needs_own(&self) -> bool {
        matches!(self.body, ScriptBody::Own | ScriptBody::OwnHalf) || self.status.is_none()
    }

    /// The answer, from the provider's own one when [`Script::needs_own`].
    pub(crate) fn answer(&self, own: Option<Resp>) -> (Resp, Option<Cut>) {
        let own = own.unwrap_or_else(|| Resp::empty(200));
        let mut resp = match &self.body {
            ScriptBody::Own => own.clone(),
            ScriptBody::OwnHalf => {
                let mut r = own.clone();
                r.body = r.body.slice(..r.body.len() / 2);
                r
            }
            ScriptBody::Json(v) => Resp::json(own.status, v),
            ScriptBody::Text(t) => Resp::text(own.status, t),
            ScriptBody::Filler(n) => Resp::text(own.status, &" ".repeat(*n)),
        };
        if let Some(s) = self.status {
            resp.status = s;
        }
        for (k, v) in &self.headers {
            resp = resp.with_header(k, v);
        }
        (resp, self.cut)
    }
}

/// The scripts of one provider, first match first.
#[derive(Debug, Default)]
pub(crate) struct Scripts {
    list: Vec<(Script, u32)>,
}

impl Scripts {
    pub fn add(&mut self, s: Script) {
        let left = s.times;
        self.list.push((s, left));
    }

    pub fn clear(&mut self) {
        self.list.clear();
    }

    /// The script answering `r`, used up once.
    pub fn take(&mut self, r: &Req) -> Option<Script> {
        let i = self.list.iter().position(|(s, _)| s.matches(r))?;
        let (s, left) = &mut self.list[i];
        let out = s.clone();
        if *left > 0 {
            *left -= 1;
            if *left == 0 {
                self.list.remove(i);
            }
        }
        Some(out)
    }
}
