//! The `sim` CLI options and start-up speed with a large seed.

use std::time::{Duration, Instant};

use clap::Parser;
use contact_sync::sim::{Provider, Sim, SimArgs};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    sim: SimArgs,
}

#[test]
fn defaults() {
    let a = Cli::parse_from(["x"]).sim;
    assert_eq!(
        (a.seed, a.contacts, a.google_users, a.outlook_users),
        (1, 200, 1, 1)
    );
    assert_eq!(a.listen_google.to_string(), "127.0.0.1:0");
    let o = Cli::parse_from(["x", "--seed", "9", "--contacts", "5", "--google-users", "2"])
        .sim
        .options();
    assert_eq!(o.seed, 9);
    assert_eq!(o.google_users.len(), 2);
    assert_eq!(o.google_users[1].user, "google2@example.com");
    assert_eq!(o.outlook_users[0].contacts, 5);
}

#[tokio::test]
async fn seeding_25k_contacts_is_fast() {
    let args = Cli::parse_from(["x", "--seed", "1", "--contacts", "25000"]).sim;
    let t0 = Instant::now();
    let sim = Sim::start(args.options()).await.expect("start");
    let took = t0.elapsed();
    eprintln!("seeded 2 x 25000 contacts in {took:?}");
    // Debug builds are slow; release builds take a fraction of this.
    assert!(took < Duration::from_secs(20), "{took:?}");
    let rt = sim
        .refresh_token(Provider::Google, "google1@example.com")
        .expect("token");
    // A full listing of 25k people stays quick too.
    let c = reqwest::Client::new();
    let t: serde_json::Value = c
        .post(format!("{}/token", sim.google_base))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt.as_str()),
            ("client_id", "c"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tok = t["access_token"].as_str().unwrap().to_string();
    let t1 = Instant::now();
    let mut page: Option<String> = None;
    let mut n = 0;
    loop {
        let mut url = format!("{}/v1/people/me/connections?pageSize=1000&personFields=names,emailAddresses,phoneNumbers", sim.google_base);
        if let Some(p) = &page {
            url.push_str(&format!("&pageToken={p}"));
        }
        let v: serde_json::Value = c
            .get(url)
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        n += v["connections"].as_array().map(Vec::len).unwrap_or(0);
        match v["nextPageToken"].as_str() {
            Some(p) => page = Some(p.to_string()),
            None => break,
        }
    }
    assert_eq!(n, 25000);
    eprintln!("listed 25000 people in {:?}", t1.elapsed());
    assert!(sim
        .refresh_token(Provider::Outlook, "outlook1@example.com")
        .is_some());
    sim.stop().await;
}
