//! `contact-sync sim`: serves both simulated providers until Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Provider, SeedUser, Sim, SimOptions};

/// Arguments of the `sim` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Seed of the contact generator (users of both providers share people).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Contacts per seeded user.
    #[arg(long, default_value_t = 200)]
    pub contacts: usize,
    /// Number of Google users (google1@example.com, ...).
    #[arg(long, default_value_t = 1)]
    pub google_users: usize,
    /// Number of Outlook users (outlook1@example.com, ...).
    #[arg(long, default_value_t = 1)]
    pub outlook_users: usize,
    /// Listen address of the Google simulator.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen_google: SocketAddr,
    /// Listen address of the Graph simulator.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen_graph: SocketAddr,
    /// Milliseconds added to every request of both providers (50 is closer to what a user
    /// sees than loopback).
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Outlook's request budget per mailbox, enforced with 429 `TooManyRequests` (Graph's
    /// is 10000 per 10 minutes); 0 leaves it off.
    #[arg(long, default_value_t = 0)]
    pub graph_request_budget: u32,
    /// The window of `--graph-request-budget`.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub graph_budget_window: Duration,
}

impl SimArgs {
    /// The simulator options these arguments describe.
    pub fn options(&self) -> SimOptions {
        let users = |prefix: &str, n: usize, folders: usize| {
            (1..=n)
                .map(|i| SeedUser {
                    user: format!("{prefix}{i}@example.com"),
                    contacts: self.contacts,
                    seed: self.seed,
                    starred_share: 0.2,
                    child_folders: folders,
                })
                .collect()
        };
        SimOptions {
            seed: self.seed,
            google_users: users("google", self.google_users, 0),
            outlook_users: users("outlook", self.outlook_users, 2),
            access_token_ttl: Duration::from_secs(3600),
        }
    }
}

/// Starts the simulator, prints its addresses and refresh tokens, and runs until Ctrl-C.
pub async fn run_cli(args: SimArgs) -> anyhow::Result<()> {
    let opts = args.options();
    let started = std::time::Instant::now();
    let sim = Sim::start_on(args.listen_google, args.listen_graph, opts.clone()).await?;
    if args.latency_ms > 0 {
        for p in [Provider::Google, Provider::Outlook] {
            sim.set_faults(
                p,
                super::FaultConfig {
                    latency_ms: args.latency_ms,
                    ..super::FaultConfig::default()
                },
            );
        }
    }
    if args.graph_request_budget > 0 {
        sim.set_graph_budget(Some((args.graph_request_budget, args.graph_budget_window)));
    }
    println!("google_base = {}", sim.google_base);
    println!("google_token_url = {}/token", sim.google_base);
    println!("graph_base = {}", sim.graph_base);
    println!("graph_api_base = {}/v1.0", sim.graph_base);
    println!(
        "graph_token_url = {}/common/oauth2/v2.0/token",
        sim.graph_base
    );
    for u in &opts.google_users {
        if let Some(t) = sim.refresh_token(Provider::Google, &u.user) {
            println!("google {} refresh_token = {t}", u.user);
        }
    }
    for u in &opts.outlook_users {
        if let Some(t) = sim.refresh_token(Provider::Outlook, &u.user) {
            println!("outlook {} refresh_token = {t}", u.user);
        }
    }
    println!(
        "ready in {} ms; Ctrl-C stops",
        started.elapsed().as_millis()
    );
    tokio::signal::ctrl_c().await?;
    sim.stop().await;
    Ok(())
}
