//! contact-sync: keeps an on-prem CRM's contact list in step with Google and Outlook
//! address books.
//!
//! # Layout
//! - [`config`]: the TOML file, its validation and the reload diff.
//! - [`model`]: CRM contacts, provider contacts, links, metrics.
//! - [`store`]: the `Store` seam (sled and in-memory engines) and the typed [`store::Db`].
//! - [`normalize`]: the keys matching compares on.
//! - [`sync`]: the pure planner (eligibility, matching, merge).
//! - [`actors`]: supervisor, account, matcher and writer actors.
//! - [`providers`]: the Google People API and Microsoft Graph clients, OAuth, retries.
//! - [`api`]: the HTTP API, dashboard and `/metrics`.
//! - [`sim`]: the simulated providers used by tests, `demo` and benchmarks.

pub mod actors;
pub mod alloc;
pub mod api;
pub mod app;
pub mod audit;
pub mod cli;
pub mod config;
pub mod crm;
pub mod health;
pub mod logging;
pub mod model;
pub mod normalize;
pub mod oauth_flow;
pub mod ops;
pub mod providers;
pub mod runtime;
pub mod secrets;
pub mod sim;
pub mod store;
pub mod sync;
pub mod systemd;
pub mod watch;
