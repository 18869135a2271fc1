//! `userrl bench`: throughput numbers for the note and the README. `gyms` plays the expert against the
//! scripted user over every gym on one thread and counts env steps per second; `llm` starts a local
//! OpenAI-compatible test server with a fixed latency and measures how much latency our client adds at a
//! given number of requests in flight. `nn` measures the policy engine's CPU backend (matmul, prefill, decode
//! at batch 1 and batch N) on SmolLM2. `serve` measures the web server (runs page, chart data; see
//! `serve::bench`). `openai` serves a model through the /v1 API on a local port and measures
//! time to first token and total tokens/s at 1, 8, 32 concurrent streamed requests (the engine's batching).

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
    /// Policy engine: matmul GFLOP/s vs the raw sgemm, prefill, decode (batch 1 and N) and training-step
    /// tokens/s (medians), on the CPU backend or on wgpu.
    Nn {
        /// `cpu`, or `wgpu` (the first adapter wgpu offers; set WGPU_BACKEND to choose). On wgpu: the many-row
        /// matmul with each tiling, prefill, decode at batch 1 and `--batch` (the engine's batched forward), and
        /// the training step with its log-prob forward (the f16/bf16 weights and the sgemm peer are CPU-only).
        #[arg(long, default_value = "cpu")]
        device: String,
        /// A `.gguf` file, a checkpoint directory, or `random:smollm2-135m` (SmolLM2-135M's shapes with random
        /// weights, as the PyTorch peer uses: same arithmetic, no model file to ship to a GPU box).
        #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
        model: std::path::PathBuf,
        /// Timed runs per number (after one warm-up); the median is reported.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Square matmul size.
        #[arg(long, default_value_t = 1024)]
        matmul_n: usize,
        #[arg(long, default_value_t = 512)]
        prefill_tokens: usize,
        /// Tokens already in the cache before the timed decode steps.
        #[arg(long, default_value_t = 64)]
        decode_context: usize,
        /// Decode steps per timed run.
        #[arg(long, default_value_t = 32)]
        decode_steps: usize,
        /// The batch of the batched decode (0 skips it).
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Sequence length of the timed training step (forward + backward + AdamW; 0 skips it).
        #[arg(long, default_value_t = 512)]
        train_seq: usize,
        /// Sequences per training step.
        #[arg(long, default_value_t = 1)]
        train_batch: usize,
        #[arg(long)]
        json: bool,
    },
    /// The /v1 API on a local model: time to first token (p50) and total tokens/s at N concurrent streams.
    Openai {
        /// A `.gguf` file or a checkpoint directory.
        #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
        model: std::path::PathBuf,
        /// Concurrent streamed requests per round, comma-separated.
        #[arg(long, default_value = "1,8,32")]
        streams: String,
        /// Tokens each request generates (the end-of-turn token is ignored so every request runs this long).
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        #[arg(long)]
        json: bool,
    },
    /// The web server in-process on a temporary database: runs-page SSR latency under concurrent
    /// connections, and chart data for a run with a million points.
    Serve {
        #[arg(long, default_value_t = 50)]
        connections: usize,
        /// Runs-page requests in total.
        #[arg(long, default_value_t = 2000)]
        requests: usize,
        /// Runs listed on the page.
        #[arg(long, default_value_t = 30)]
        runs: usize,
        /// Points of the big run's reward curve.
        #[arg(long, default_value_t = 1_000_000)]
        points: usize,
        /// Chart-data requests, one at a time.
        #[arg(long, default_value_t = 50)]
        chart_requests: usize,
        #[arg(long, default_value_t = 800)]
        buckets: usize,
        #[arg(long)]
        json: bool,
    },
}

fn bench_serve(options: &crate::serve::bench::ServeBenchOptions, json_out: bool) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(crate::serve::bench::run(options))?;
    if json_out {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let line = |name: &str, l: &crate::serve::bench::Latency| {
            println!(
                "{name:<34} {:>7} req  p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms  {:>8.0} req/s",
                l.requests, l.p50_ms, l.p99_ms, l.max_ms, l.requests_per_s
            )
        };
        line(&format!("runs page ({} runs, {} conns)", report.runs, report.connections), &report.runs_page);
        line("runs page (1 conn)", &report.runs_page_single);
        line("Store::runs() in-process", &report.runs_query);
        line(&format!("chart data ({} pts, {} buckets)", report.points, report.buckets), &report.chart_data);
        println!("filled the database in {:.1} s; runs page {} bytes", report.fill_seconds, report.runs_page_bytes);
    }
    Ok(())
}

pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Gyms { seconds, gyms, json } => bench_gyms(seconds, &gyms, json),
        Command::Llm { concurrency, requests, latency_ms, json } => bench_llm(concurrency, requests, latency_ms, json),
        Command::Nn {
            device,
            model,
            runs,
            matmul_n,
            prefill_tokens,
            decode_context,
            decode_steps,
            batch,
            train_seq,
            train_batch,
            json,
        } => {
            let opts = NnOptions {
                runs,
                matmul_n,
                prefill_tokens,
                decode_context,
                decode_steps,
                batch,
                train_seq,
                train_batch,
            };
            match device.as_str() {
                "cpu" => bench_nn(&model, &opts, json),
                "wgpu" => bench_nn_wgpu(&model, &opts, json),
                other => anyhow::bail!("--device {other}: expected cpu or wgpu"),
            }
        }
        Command::Openai { model, streams, max_tokens, json } => bench_openai(&model, &streams, max_tokens, json),
        Command::Serve { connections, requests, runs, points, chart_requests, buckets, json } => {
            let options =
                crate::serve::bench::ServeBenchOptions { connections, requests, runs, points, chart_requests, buckets };
            bench_serve(&options, json)
        }
    }
}

/// What one streamed request took and what its usage chunk counted.
struct Timed {
    /// Seconds to the first content token.
    first: f64,
    completion_tokens: u64,
    prompt_tokens: u64,
    /// Prompt tokens the engine took from its prefix store.
    cached_tokens: u64,
}

/// One streamed request, timed.
async fn timed_stream(client: &reqwest::Client, url: &str, body: serde_json::Value) -> Result<Timed> {
    let start = Instant::now();
    let mut response = client.post(url).json(&body).send().await?;
    anyhow::ensure!(response.status().is_success(), "HTTP {}: {}", response.status(), response.text().await?);
    let (mut buffer, mut first, mut usage) = (String::new(), None, None);
    while let Some(bytes) = response.chunk().await? {
        buffer.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            for data in event.lines().filter_map(|l| l.strip_prefix("data: ")) {
                if data == "[DONE]" {
                    continue;
                }
                let chunk: serde_json::Value = serde_json::from_str(data)?;
                anyhow::ensure!(chunk.get("error").is_none(), "stream error: {chunk}");
                let content = chunk["choices"][0]["delta"]["content"].as_str().unwrap_or_default();
                if first.is_none() && !content.is_empty() {
                    first = Some(start.elapsed().as_secs_f64());
                }
                if chunk["usage"].is_object() {
                    usage = Some(chunk["usage"].clone());
                }
            }
        }
    }
    let usage = usage.ok_or_else(|| anyhow::anyhow!("the stream ended without a usage chunk"))?;
    let count =
        |v: &serde_json::Value| v.as_u64().ok_or_else(|| anyhow::anyhow!("a usage chunk without counts: {usage}"));
    Ok(Timed {
        first: first.unwrap_or_else(|| start.elapsed().as_secs_f64()),
        completion_tokens: count(&usage["completion_tokens"])?,
        prompt_tokens: count(&usage["prompt_tokens"])?,
        cached_tokens: usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0),
    })
}

fn bench_openai(path: &std::path::Path, streams: &str, max_tokens: usize, json_out: bool) -> Result<()> {
    let counts: Vec<usize> = streams
        .split(',')
        .map(|s| s.trim().parse::<usize>().map_err(|e| anyhow::anyhow!("--streams `{s}`: {e}")))
        .collect::<Result<_>>()?;
    anyhow::ensure!(counts.iter().all(|&c| c > 0), "--streams must be positive numbers");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let app = crate::openai::mount(axum::Router::new(), &[format!("bench={}", path.display())]).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/v1/chat/completions", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::new();
        let body = |i: usize, max: usize| {
            json!({"model": "bench", "stream": true, "stream_options": {"include_usage": true}, "temperature": 0.7,
                   "seed": i, "max_tokens": max, "ignore_eos": true,
                   "messages": [{"role": "user", "content": format!("Tell me a story about the number {i}.")}]})
        };
        timed_stream(&client, &url, body(0, 4)).await?;
        let mut rows = Vec::new();
        for &n in &counts {
            if !json_out {
                eprintln!("[bench openai] {n} concurrent streams of {max_tokens} tokens");
            }
            let start = Instant::now();
            let jobs: Vec<_> = (0..n)
                .map(|i| {
                    let (client, url, body) = (client.clone(), url.clone(), body(i, max_tokens));
                    tokio::spawn(async move { timed_stream(&client, &url, body).await })
                })
                .collect();
            let mut ttft = Vec::with_capacity(n);
            let (mut tokens, mut prompt_tokens, mut cached_tokens) = (0, 0, 0);
            for job in jobs {
                let timed = job.await??;
                ttft.push(timed.first * 1e3);
                tokens += timed.completion_tokens;
                prompt_tokens += timed.prompt_tokens;
                cached_tokens += timed.cached_tokens;
            }
            let wall = start.elapsed().as_secs_f64();
            ttft.sort_by(f64::total_cmp);
            rows.push(json!({
                "streams": n,
                "tokens": tokens,
                "seconds": wall,
                "tokens_per_s": tokens as f64 / wall,
                "ttft_ms_p50": percentile(&ttft, 50.0),
                "ttft_ms_max": ttft.last().copied().unwrap_or_default(),
                "prompt_tokens": prompt_tokens,
                "cached_prompt_tokens": cached_tokens,
            }));
        }
        let single = rows.iter().find(|r| r["streams"] == 1).and_then(|r| r["tokens_per_s"].as_f64());
        for r in &mut rows {
            if let (Some(one), Some(rate)) = (single, r["tokens_per_s"].as_f64()) {
                r["speedup_vs_1"] = json!(rate / one);
            }
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        if json_out {
            println!(
                "{}",
                json!({"device": "cpu", "threads": threads, "model": path.display().to_string(),
                                  "max_tokens": max_tokens, "rounds": rows})
            );
        } else {
            println!("/v1/chat/completions, streamed, cpu ({threads} threads), {max_tokens} tokens per request");
            println!(
                "{:>8} {:>12} {:>14} {:>10} {:>10} {:>16}",
                "streams", "tokens/s", "TTFT p50 ms", "TTFT max", "vs 1", "prompt (cached)"
            );
            for r in &rows {
                println!(
                    "{:>8} {:>12.1} {:>14.0} {:>10.0} {:>10} {:>16}",
                    r["streams"],
                    r["tokens_per_s"].as_f64().unwrap_or_default(),
                    r["ttft_ms_p50"].as_f64().unwrap_or_default(),
                    r["ttft_ms_max"].as_f64().unwrap_or_default(),
                    r["speedup_vs_1"].as_f64().map_or("-".to_string(), |s| format!("{s:.2}x")),
                    format!("{} ({})", r["prompt_tokens"], r["cached_prompt_tokens"]),
                );
            }
        }
        anyhow::Ok(())
    })
}

struct NnOptions {
    runs: usize,
    matmul_n: usize,
    prefill_tokens: usize,
    decode_context: usize,
    decode_steps: usize,
    batch: usize,
    train_seq: usize,
    train_batch: usize,
}

/// The model `bench nn` times: a file, or random weights in a named published shape.
struct BenchModel {
    model: userrl_nn::model::Llama,
}

impl BenchModel {
    const RANDOM_PREFIX: &str = "random:";

    fn load(path: &std::path::Path) -> Result<BenchModel> {
        use anyhow::Context;
        let shown = path.display().to_string();
        if let Some(name) = shown.strip_prefix(Self::RANDOM_PREFIX) {
            let config = match name {
                "smollm2-135m" => userrl_nn::model::LlamaConfig::smollm2_135m(),
                other => anyhow::bail!("--model random:{other}: the known shapes are smollm2-135m"),
            };
            return Ok(BenchModel { model: userrl_nn::checkpoint::random_model(config, true, 0) });
        }
        let loaded = userrl_nn::checkpoint::load_model(path).with_context(|| format!("loading {shown}"))?;
        Ok(BenchModel { model: loaded.model })
    }
}

fn bench_nn(path: &std::path::Path, o: &NnOptions, json_out: bool) -> Result<()> {
    use userrl_nn::bench;
    use userrl_nn::model::Precision;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let say = |what: &str| {
        if !json_out {
            eprintln!("[bench nn] {what}");
        }
    };
    let mut loaded = BenchModel::load(path)?;
    say(&format!("matmul {0}x{0}x{0}, {1} runs", o.matmul_n, o.runs));
    let mm = bench::matmul(o.matmul_n, o.runs);
    let load_average = std::fs::read_to_string("/proc/loadavg").ok().map(|s| s.trim().to_string());
    let h = loaded.model.config.hidden;
    let vocab = loaded.model.config.vocab;
    say(&format!("few-row kernels, {h} -> {vocab} (the LM head's shape)"));
    let skinny = bench::skinny(&[1, 2, 4, 8, 16], h, vocab, o.runs);
    say(&format!("prefill {} tokens", o.prefill_tokens));
    let prefill = bench::prefill(&loaded.model, o.prefill_tokens, o.runs)?;
    // Decoding at each weight precision; the f32 numbers keep the report's original keys.
    let mut decode = Vec::new();
    for precision in [Precision::F32, Precision::F16, Precision::Bf16] {
        loaded.model.set_precision(precision);
        let model = &loaded.model;
        say(&format!("decode batch 1 ({precision}), {} steps after {} tokens", o.decode_steps, o.decode_context));
        let one = bench::decode(model, o.decode_context, o.decode_steps, o.runs)?;
        let n = if o.batch > 0 {
            say(&format!(
                "decode batch {} ({precision}), {} steps after {} tokens each",
                o.batch, o.decode_steps, o.decode_context
            ));
            Some(bench::decode_batch(model, o.batch, o.decode_context, o.decode_steps, o.runs)?)
        } else {
            None
        };
        say(&format!("sampler-vs-trainer log-prob gap ({precision})"));
        let prompt = bench::synthetic_prompt(&model.config, o.decode_context);
        let gap = bench::logprob_gap(model, &prompt, 128, 7)?;
        decode.push((precision, one, n, gap));
    }
    loaded.model.set_precision(Precision::F32);
    let model = &loaded.model;
    let train = if o.train_seq > 0 {
        say(&format!("training step, seq {} x batch {}", o.train_seq, o.train_batch));
        let mut trainable = userrl_nn::train::TrainableLlama::from_llama(model)?;
        Some(bench::train_step(&mut trainable, o.train_seq, o.train_batch, o.runs.min(3))?)
    } else {
        None
    };
    let (decode1, decode_n) = (decode[0].1, decode[0].2);
    let (decode1_f16, decode_n_f16) = (decode[1].1, decode[1].2);
    let (decode1_bf16, decode_n_bf16) = (decode[2].1, decode[2].2);
    let report = json!({
        "device": "cpu",
        "threads": threads,
        "runs": o.runs,
        "statistic": "median",
        "model": path.display().to_string(),
        "matmul": mm,
        "prefill": {"tokens": o.prefill_tokens, "tokens_per_s": prefill},
        "decode": decode_json(o, decode1, decode_n),
        "decode_f16": decode_json(o, decode1_f16, decode_n_f16),
        "decode_bf16": decode_json(o, decode1_bf16, decode_n_bf16),
        "hardware_bf16": userrl_nn::skinny::bf16_dot(),
        "logprob_gap": decode.iter().map(|d| &d.3).collect::<Vec<_>>(),
        "skinny": skinny,
        "train_step": {"seq": o.train_seq, "batch": o.train_batch, "tokens_per_s": train},
        "load_average": load_average,
    });
    if json_out {
        println!("{report}");
    } else {
        println!("cpu backend, {threads} threads, median of {} runs, model {}", o.runs, path.display());
        println!(
            "matmul {0}^3: linear {1:.1} GFLOP/s, raw sgemm {2:.1} GFLOP/s, ratio {3:.2}",
            mm.n, mm.linear_gflops, mm.sgemm_gflops, mm.ratio
        );
        println!("prefill {} tokens: {prefill:.1} tokens/s", o.prefill_tokens);
        for (precision, one, n, gap) in &decode {
            println!("decode batch 1 ({precision} weights): {one:.1} tokens/s (after {} tokens)", o.decode_context);
            if let Some(n) = n {
                println!("decode batch {} ({precision} weights): {n:.1} tokens/s in total", o.batch);
            }
            println!(
                "  sampler vs f32 trainer log-prob gap over {} sampled tokens: mean {:.2e}, max {:.2e}",
                gap.tokens, gap.mean_abs, gap.max_abs
            );
        }
        for k in &skinny {
            println!(
                "few-row kernel {} x {} -> {}: f32 {:.1} GFLOP/s, f16 {:.1} GFLOP/s, bf16 {:.1} GFLOP/s",
                k.rows, k.in_dim, k.out_dim, k.f32_gflops, k.f16_gflops, k.bf16_gflops
            );
        }
        if let Some(t) = train {
            println!("training step seq {} x {}: {t:.1} tokens/s", o.train_seq, o.train_batch);
        }
        if let Some(l) = &load_average {
            println!("load average: {l}");
        }
    }
    Ok(())
}

/// The `decode` object of `bench nn --json` (both devices; one per weight precision on the CPU).
fn decode_json(o: &NnOptions, batch1: f64, batch: Option<f64>) -> serde_json::Value {
    json!({
        "context": o.decode_context,
        "steps": o.decode_steps,
        "batch1_tokens_per_s": batch1,
        "batch": o.batch,
        "batch_tokens_per_s": batch,
    })
}

/// `bench nn --device wgpu`: the same prefill, decode (batch 1 and `--batch`) and training step through the WGSL
/// kernels.
fn bench_nn_wgpu(path: &std::path::Path, o: &NnOptions, json_out: bool) -> Result<()> {
    use userrl_nn::{bench, wgpu};
    let say = |what: &str| {
        if !json_out {
            eprintln!("[bench nn] {what}");
        }
    };
    let device = wgpu::Device::wgpu()?;
    let info = device.info();
    let adapter = format!("{} ({:?}, {:?})", info.name, info.device_type, info.backend);
    say(&format!("adapter {adapter}"));
    let loaded = BenchModel::load(path)?;
    say(&format!("matmul {0}x{0}x{0}, both tilings", o.matmul_n));
    let matmul = wgpu::bench::matmul(&device, o.matmul_n, o.runs)?;
    let model = wgpu::WgpuLlama::new(&device, &loaded.model)?;
    say(&format!("prefill {} tokens", o.prefill_tokens));
    let prefill = bench::prefill(&model, o.prefill_tokens, o.runs)?;
    say(&format!("decode batch 1, {} steps after {} tokens", o.decode_steps, o.decode_context));
    let decode1 = bench::decode(&model, o.decode_context, o.decode_steps, o.runs)?;
    let decode_n = if o.batch > 1 {
        say(&format!("decode batch {}, the engine's batched forward", o.batch));
        Some(bench::decode_batch(&model, o.batch, o.decode_context, o.decode_steps, o.runs)?)
    } else {
        None
    };
    let train = if o.train_seq > 0 {
        say(&format!("training step, seq {} x batch {}", o.train_seq, o.train_batch));
        let trainable = userrl_nn::train::TrainableLlama::from_llama(&loaded.model)?;
        Some(wgpu::bench::train_step(&device, &trainable, o.train_seq, o.train_batch, o.runs.min(3))?)
    } else {
        None
    };
    let report = json!({
        "device": "wgpu",
        "adapter": adapter,
        "matmul_tiles": format!("{:?}", device.matmul_tiles()),
        "split_k_target": device.split_k_target(),
        "blocked_attention": device.blocked_attention(),
        "attention_key_split": device.attention_key_split(),
        "matmul": matmul,
        "runs": o.runs,
        "statistic": "median",
        "model": path.display().to_string(),
        "prefill": {"tokens": o.prefill_tokens, "tokens_per_s": prefill},
        "decode": decode_json(o, decode1, decode_n),
        "train_step": train,
    });
    if json_out {
        println!("{report}");
    } else {
        println!("wgpu backend on {adapter}, median of {} runs, model {}", o.runs, path.display());
        for m in &matmul {
            println!("matmul {0}x{0}x{0} ({1} tiles): {2:.1} GFLOP/s", m.n, m.tiles, m.gflops);
        }
        let split = match (device.matmul_tiles(), device.split_k_target()) {
            (userrl_nn::wgpu::MatmulTiles::Shared, groups) if groups > 0 => {
                format!("split along k below {groups} workgroups")
            }
            _ => "not split along k".to_string(),
        };
        let attention = match (device.blocked_attention(), device.attention_key_split()) {
            (false, _) => "one workgroup per row and head".to_string(),
            (true, 0) => "blocked".to_string(),
            (true, keys) => format!("blocked, {keys} keys per workgroup"),
        };
        println!(
            "many-row matmuls use {:?} tiles, {split}; attention {attention} (USERRL_WGPU_MATMUL, \
             USERRL_WGPU_SPLIT_K, USERRL_WGPU_ATTENTION and USERRL_WGPU_KEY_SPLIT override)",
            device.matmul_tiles()
        );
        println!("prefill {} tokens: {prefill:.1} tokens/s", o.prefill_tokens);
        println!("decode batch 1: {decode1:.1} tokens/s (after {} tokens)", o.decode_context);
        if let Some(rate) = decode_n {
            println!("decode batch {}: {rate:.1} tokens/s", o.batch);
        }
        if let Some(t) = train {
            println!("training step seq {} x {}: {:.2} tokens/s", t.seq, t.batch, t.tokens_per_s);
            println!("token log-probs (GRPO's old-log-prob forward): {:.1} tokens/s", t.logprob_tokens_per_s);
        }
    }
    Ok(())
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
