//! The command line (SPEC §7).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "contact-sync",
    version,
    about = "Keeps an on-prem CRM's contacts in step with Google and Outlook address books."
)]
pub struct Cli {
    /// The configuration file.
    #[arg(long, global = true, env = "CONTACT_SYNC_CONFIG", default_value = crate::config::DEFAULT_PATH)]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (what systemd starts).
    Run,
    /// Run the daemon against simulated providers with sample contacts; no credentials needed.
    Demo(DemoArgs),
    /// Authorise an account: OAuth 2 authorization code with PKCE and a loopback redirect.
    Connect(ConnectArgs),
    /// Forget an account's grant (revoking it where the provider supports it); synced data stays.
    Disconnect {
        /// The account id from the configuration.
        account: String,
    },
    /// Show each account's state and today's metrics, from the running daemon.
    Status {
        /// Only this account.
        account: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check a configuration file and exit (78 when it is invalid).
    CheckConfig {
        /// The file to check (default: --config).
        path: Option<PathBuf>,
    },
    /// Dry run: what a sync of ACCOUNT would add, update, skip and delete.
    Preview {
        account: String,
        /// How many actions of each kind to list.
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
    /// Apply the deletions held by the deletion guard for ACCOUNT.
    Approve {
        /// The account id from the configuration.
        account: String,
    },
    /// Bring back a deleted CRM contact (kept for `tombstone_retention`), with its links.
    Restore {
        /// The CRM contact id.
        contact_id: u64,
    },
    /// Why a person is or is not in the CRM, and what happened to them: their fields, links,
    /// base snapshots and every audit event, or the sync that skipped them and why.
    Explain {
        /// A CRM contact id, an email address, a phone number or a name.
        query: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write a new random key that seals refresh tokens (mode 0600); never overwrites.
    GenKey {
        /// Where to write it, e.g. /etc/contact-sync/token-key.
        path: PathBuf,
    },
    /// Write a new random API or operator token (mode 0600); never overwrites.
    GenToken {
        /// Where to write it, e.g. /etc/contact-sync/admin-token.
        path: PathBuf,
    },
    /// Serve the simulated Google and Microsoft providers alone (tests, benchmarks).
    Sim(crate::sim::SimArgs),
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Exit after the first sync, printing its summary.
    #[arg(long)]
    pub once: bool,
    /// Where the dashboard and API listen.
    #[arg(long, default_value = "127.0.0.1:8631")]
    pub listen: std::net::SocketAddr,
    /// Contacts per simulated account.
    #[arg(long, default_value_t = 200)]
    pub contacts: usize,
    /// Seed of the sample address books.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The account id from the configuration.
    pub account: String,
    /// Import the refresh token in this file instead of the interactive flow.
    #[arg(long)]
    pub refresh_token_file: Option<PathBuf>,
    /// Outlook: use the device authorization grant (no browser on this machine).
    #[arg(long)]
    pub device_code: bool,
    /// Do not try to open a browser.
    #[arg(long)]
    pub no_browser: bool,
    /// How long to wait for the browser to come back.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}
