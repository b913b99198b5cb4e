//! contact-sync: keeps an on-prem CRM's contact list in step with Google, Outlook and
//! CardDAV address books.
//!
//! # Layout
//! - [`actors`]: supervisor, account, matcher and writer actors.
//! - [`api`]: the HTTP API, dashboard, sync-health pages and `/metrics`.
//! - [`app`]: the boot sequence and the subcommands' entry points.
//! - [`audit`]: the audit log (SPEC §7), stored with each change and drained to daily files.
//! - [`cli`]: the command line (SPEC §7).
//! - [`config`]: the TOML file, its validation and the reload diff.
//! - [`crm`]: CRM-side edits made through the API: validation and the batch that applies them.
//! - [`health`]: sync health read from the store (history, exclusions, failed pushes, holds).
//! - [`logging`]: the stderr tracing subscriber, started before the configuration is read.
//! - [`model`]: CRM contacts, provider contacts, links, metrics.
//! - [`normalize`]: the keys matching compares on.
//! - [`oauth_flow`]: getting a refresh token from a person (authorization code, device code).
//! - [`ops`]: operator subcommands (`status`, `connect`, `preview`, `demo`, `sim`, …).
//! - [`providers`]: the Google, Microsoft Graph and CardDAV clients on one transport, OAuth.
//! - [`runtime`]: state the actors and the API share: configuration, live account status.
//! - [`secrets`]: refresh tokens sealed at rest under a key file.
//! - [`sim`]: the simulated providers used by tests, `demo` and benchmarks.
//! - [`store`]: the `Store` seam (sled and in-memory engines) and the typed [`store::Db`].
//! - [`sync`]: the pure planner (eligibility, matching, merge) and the two-way outbox.
//! - [`systemd`]: `Type=notify` readiness and reload notifications.
//! - [`watch`]: the configuration file watcher that triggers reloads.

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
