//! contact-sync: keeps an on-prem CRM's contact list in step with Google and Outlook
//! address books.
//!
//! # Layout
//! - [`config`]: the TOML file, its validation and the reload diff.
//! - [`model`]: CRM contacts, provider contacts, links, metrics.
//! - [`store`]: the `Store` seam (sled and in-memory engines) and the typed [`store::Db`].
//! - [`normalize`]: the keys matching compares on.

pub mod audit;
pub mod config;
pub mod model;
pub mod normalize;
pub mod providers;
pub mod secrets;
pub mod sim;
pub mod store;
pub mod sync;
