//! Load benchmark of the runs page's server-side rendering: a temporary SQLite store with 100 runs (metrics
//! on each), the app's router on a loopback port, and `--conns` clients (default 50) each sending GET / over
//! fresh HTTP/1.1 connections. Prints p50/p99 latency and throughput. Run it in release:
//! `cargo run --release -p userrl-app --features ssr --example ssr_bench -- [--conns 50] [--requests 2000]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use userrl_app::auth::{Auth, AuthConfig};
use userrl_app::{AppContext, LaunchError, RunLauncher, site_options, site_router};
use userrl_store::{NewRun, Store};
use userrl_types::{RunKind, RunStatus};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Launching is not part of this benchmark.
struct NoLauncher;

#[async_trait::async_trait]
impl RunLauncher for NoLauncher {
    fn presets(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    async fn launch(&self, _config_toml: &str) -> std::result::Result<i64, LaunchError> {
        Err(LaunchError { field: None, message: "the benchmark launches nothing".into() })
    }
    async fn cancel(&self, _run_id: i64) -> std::result::Result<(), String> {
        Err("the benchmark cancels nothing".into())
    }
    async fn resume(&self, _run_id: i64) -> std::result::Result<(), String> {
        Err("the benchmark resumes nothing".into())
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn get(addr: std::net::SocketAddr) -> Result<Duration> {
    let start = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").await?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body).await?;
    if !body.starts_with(b"HTTP/1.1 200") {
        return Err(format!("unexpected answer: {}", String::from_utf8_lossy(&body[..body.len().min(80)])).into());
    }
    Ok(start.elapsed())
}

#[tokio::main]
async fn main() -> Result<()> {
    let conns = arg("--conns", 50);
    let requests = arg("--requests", 2000);
    let dir = std::env::temp_dir().join(format!("userrl-ssr-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let store = Store::connect(&format!("sqlite://{}", dir.join("bench.db").display())).await?;
    for i in 0..100 {
        let id = store
            .create_run(&NewRun {
                name: format!("run-{i}"),
                kind: RunKind::Train,
                config: "name = \"bench\"\n".into(),
                gyms: vec!["intention".into(), "turtle".into()],
                model: "SmolLM2-135M-Instruct".into(),
                device: "cpu".into(),
                total_steps: 100,
            })
            .await?;
        store.set_run_status(id, RunStatus::Running, "").await?;
        for step in 0..100 {
            store.append_metrics(id, step, step, &[("reward".into(), step as f64 / 100.0)]).await?;
        }
    }
    let auth = Auth::new(store.clone(), AuthConfig::default());
    let ctx = AppContext {
        store,
        launcher: Arc::new(NoLauncher),
        auth,
        crowd: None,
        episodes: Arc::new(userrl_app::hosts::Disabled),
        chat: Arc::new(userrl_app::hosts::Disabled),
    };
    let router = site_router(ctx, site_options());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, service).await });
    for _ in 0..20 {
        get(addr).await?; // warm up
    }
    let start = Instant::now();
    let per = requests.div_ceil(conns);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(per);
            for _ in 0..per {
                out.push(get(addr).await?);
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(out)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let wall = start.elapsed();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    println!(
        "runs page SSR, 100 runs, {conns} concurrent connections, {} requests: p50 {:.1} ms, p99 {:.1} ms, {:.0} req/s",
        lat.len(),
        pct(0.50),
        pct(0.99),
        lat.len() as f64 / wall.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
