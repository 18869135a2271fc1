//! `userrl bench`: throughput numbers for the note and the README. `gyms` plays the expert against the
//! scripted user over every gym on one thread and counts env steps per second; `llm` starts a local
//! OpenAI-compatible test server with a fixed latency and measures how much latency our client adds at a
//! given number of requests in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use userrl_gym::env::EnvConfig;
use userrl_gym::eval::{episode_seed, run_episode};
use userrl_gym::llm::{LlmClient, LlmConfig, Prompt};
use userrl_gym::testserver::{self, Behavior};
use userrl_gym::user::ScriptedUser;
use userrl_gym::{Catalog, User};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Env steps per second, expert agent x scripted user, one thread.
    Gyms {
        /// Minimum seconds of play per gym.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        #[arg(long, default_value = "all")]
        gyms: String,
        #[arg(long)]
        json: bool,
    },
    /// Client-added latency at N requests in flight against a local test server.
    Llm {
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Requests in total.
        #[arg(long, default_value_t = 2048)]
        requests: usize,
        /// The server's own latency per request.
        #[arg(long, default_value_t = 50)]
        latency_ms: u64,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Gyms { seconds, gyms, json } => bench_gyms(seconds, &gyms, json),
        Command::Llm { concurrency, requests, latency_ms, json } => bench_llm(concurrency, requests, latency_ms, json),
    }
}

fn bench_gyms(seconds: f64, list: &str, json_out: bool) -> Result<()> {
    let kinds = super::parse_gyms(list)?;
    let catalog = Catalog::builtin(&kinds)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let user: Arc<dyn User> = Arc::new(ScriptedUser);
    let mut rows = Vec::new();
    let (mut all_steps, mut all_time) = (0usize, Duration::ZERO);
    for gym in catalog.gyms() {
        let ids = gym.task_ids(None);
        anyhow::ensure!(!ids.is_empty(), "{} has no tasks", gym.kind());
        let (mut steps, mut episodes) = (0usize, 0usize);
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < seconds {
            for (i, id) in ids.iter().enumerate() {
                let seed = episode_seed(episodes as u64, gym.kind(), i);
                let config = EnvConfig { seed, ..EnvConfig::default() };
                let mut agent = gym.expert(id, seed)?;
                let t = runtime.block_on(run_episode(gym.as_ref(), id, agent.as_mut(), user.clone(), &config))?;
                steps += t.turns.len();
                episodes += 1;
            }
        }
        let elapsed = start.elapsed();
        all_steps += steps;
        all_time += elapsed;
        rows.push(json!({
            "gym": gym.kind().name(),
            "episodes": episodes,
            "steps": steps,
            "seconds": elapsed.as_secs_f64(),
            "steps_per_s": steps as f64 / elapsed.as_secs_f64(),
        }));
    }
    let overall = all_steps as f64 / all_time.as_secs_f64();
    if json_out {
        println!("{}", json!({"threads": 1, "gyms": rows, "steps_per_s": overall}));
    } else {
        println!("{:<10} {:>9} {:>9} {:>12}", "gym", "episodes", "steps", "steps/s");
        for r in &rows {
            println!(
                "{:<10} {:>9} {:>9} {:>12.0}",
                r["gym"].as_str().unwrap_or_default(),
                r["episodes"],
                r["steps"],
                r["steps_per_s"].as_f64().unwrap_or_default()
            );
        }
        println!("{:<10} {:>9} {:>9} {:>12.0}   (expert x scripted user, one thread)", "all", "", all_steps, overall);
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn bench_llm(concurrency: usize, requests: usize, latency_ms: u64, json_out: bool) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let latency = Duration::from_millis(latency_ms);
        let server = testserver::start_detached(Arc::new(move |_, _| {
            Behavior::Delay(latency, Box::new(Behavior::Reply("{\"thought\": \"ok\", \"response\": \"Yes\"}".into())))
        }))?;
        let config = LlmConfig {
            base_urls: vec![server.base_url.clone()],
            concurrency,
            cache: Some(false),
            timeout_ms: 30_000,
            ..LlmConfig::default()
        };
        let client = Arc::new(LlmClient::new(config)?);
        // Warm the connection pool so the numbers are steady-state.
        let warm: Vec<_> = (0..concurrency.min(requests))
            .map(|i| {
                let client = client.clone();
                tokio::spawn(
                    async move { client.complete(&Prompt::new("bench", format!("warm {i}")), &|_| true).await },
                )
            })
            .collect();
        for w in warm {
            w.await??;
        }
        let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let start = Instant::now();
        let mut jobs = Vec::with_capacity(requests);
        for i in 0..requests {
            let client = client.clone();
            let permit = semaphore.clone().acquire_owned().await?;
            // Ramp up over one server latency so the first wave is not one synchronised burst (which would
            // measure the server's queue, not the client).
            let ramp = if i < concurrency { latency.mul_f64(i as f64 / concurrency as f64) } else { Duration::ZERO };
            jobs.push(tokio::spawn(async move {
                tokio::time::sleep(ramp).await;
                let t = Instant::now();
                let r = client.complete(&Prompt::new("bench", format!("request {i}")), &|_| true).await;
                drop(permit);
                r.map(|_| t.elapsed())
            }));
        }
        let mut added = Vec::with_capacity(requests);
        for job in jobs {
            added.push((job.await??.as_secs_f64() - latency.as_secs_f64()) * 1e3);
        }
        let wall = start.elapsed().as_secs_f64();
        added.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&added, 50.0), percentile(&added, 99.0));
        let report = json!({
            "concurrency": concurrency,
            "requests": requests,
            "server_latency_ms": latency_ms,
            "max_in_flight_at_server": server.max_in_flight(),
            "client_added_ms": {"p50": p50, "p99": p99, "max": added.last().copied().unwrap_or_default()},
            "requests_per_s": requests as f64 / wall,
        });
        if json_out {
            println!("{report}");
        } else {
            println!(
                "{requests} requests, {concurrency} in flight (server saw at most {}), server latency {latency_ms} ms\n\
                 client-added latency: p50 {p50:.2} ms, p99 {p99:.2} ms; {:.0} requests/s",
                server.max_in_flight(),
                requests as f64 / wall
            );
        }
        anyhow::Ok(())
    })
}
