//! `userrl generate`: one chat answer from a model (a `.gguf` file or a checkpoint directory) on the CPU or,
//! with `--device wgpu` (or `auto` on a machine with a GPU), on the wgpu backend. The prompt goes through the model's chat template; the answer streams to stdout as it is sampled;
//! timings go to stderr so stdout stays just the answer.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use userrl_nn::checkpoint::load_model;
use userrl_nn::generate::{Sampling, generate_stream};
use userrl_nn::tokenizer::{ChatMessage, Tokenizer};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A `.gguf` file or a checkpoint directory (model.safetensors + config.json + tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// The user message.
    #[arg(long)]
    pub prompt: String,
    /// A system message; without one the model's template decides (SmolLM2's inserts its default).
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 keeps every token.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// `auto` runs on a hardware GPU through wgpu when there is one, else on the CPU; `wgpu` forces wgpu (a
    /// software Vulkan driver such as lavapipe included).
    #[arg(long, default_value = "auto")]
    pub device: DeviceArg,
    /// The weights the CPU backend decodes with: `f16` (half-precision copies, about twice the tokens/s of one
    /// sequence), `bf16` (inputs rounded to bf16 too) or `f32`. Prompts past 128 tokens run in f32; ignored on
    /// wgpu.
    #[arg(long, default_value = "f16")]
    pub weights: userrl_nn::model::Precision,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    Auto,
    Cpu,
    Wgpu,
}

/// The ids that end an answer: the tokenizer's EOS and the ChatML end-of-turn / end-of-text tokens if present.
fn stop_tokens(tokenizer: &Tokenizer) -> Vec<u32> {
    let mut stop = vec![tokenizer.eos];
    for special in ["<|im_end|>", "<|endoftext|>"] {
        if let Some(id) = tokenizer.token_id(special).filter(|id| !stop.contains(id)) {
            stop.push(id);
        }
    }
    stop
}

/// Turns the growing list of generated ids into text pieces to print, holding back a piece that ends inside
/// a UTF-8 character (byte-level BPE splits characters across tokens).
struct Streamer<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    printed: usize,
}

impl Streamer<'_> {
    fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}') || text.len() <= self.printed || !text.is_char_boundary(self.printed) {
            return Ok(None);
        }
        let piece = text[self.printed..].to_string();
        self.printed = text.len();
        Ok(Some(piece))
    }
}

pub fn run(args: Args) -> Result<()> {
    anyhow::ensure!(args.temperature >= 0.0, "--temperature must be >= 0");
    anyhow::ensure!(args.top_p > 0.0 && args.top_p <= 1.0, "--top-p must be in (0, 1]");
    let load_start = Instant::now();
    let mut loaded = load_model(&args.model).with_context(|| format!("loading the model {}", args.model.display()))?;
    let gpu = match args.device {
        DeviceArg::Cpu => None,
        DeviceArg::Auto => userrl_nn::wgpu::Device::auto(),
        DeviceArg::Wgpu => Some(userrl_nn::wgpu::Device::wgpu().context("opening a wgpu device")?),
    };
    if gpu.is_none() {
        loaded.model.set_precision(args.weights);
    }
    let (model, tokenizer) = (&loaded.model, &loaded.tokenizer);
    let load_s = load_start.elapsed().as_secs_f64();

    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::new("system", system));
    }
    messages.push(ChatMessage::new("user", &args.prompt));
    let prompt = tokenizer.render_chat(&messages, true)?;
    let ids = tokenizer.encode(&prompt)?;
    let stop = stop_tokens(tokenizer);
    let sampling = Sampling {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        max_new_tokens: args.max_tokens,
    };

    let mut out = std::io::stdout().lock();
    let mut streamer = Streamer { tokenizer, ids: Vec::new(), printed: 0 };
    let mut first_token_at = None;
    let mut print_error = None;
    let start = Instant::now();
    let gpu_model = match &gpu {
        Some(device) => {
            eprintln!("[generate] device: wgpu on {}", device.info().name);
            Some(userrl_nn::wgpu::WgpuLlama::new(device, model).context("uploading the model to the GPU")?)
        }
        None => {
            eprintln!("[generate] device: cpu, {} weights for decoding", model.precision());
            None
        }
    };
    let mut on_token = |id: u32| {
        first_token_at.get_or_insert_with(|| start.elapsed().as_secs_f64());
        if stop.contains(&id) || print_error.is_some() {
            return;
        }
        let printed = streamer.push(id).and_then(|piece| {
            if let Some(piece) = piece {
                out.write_all(piece.as_bytes())?;
                out.flush()?;
            }
            Ok(())
        });
        if let Err(e) = printed {
            print_error = Some(e);
        }
    };
    let generation = match &gpu_model {
        Some(m) => generate_stream(m, &ids, &stop, &sampling, &mut on_token)?,
        None => generate_stream(model, &ids, &stop, &sampling, &mut on_token)?,
    };
    let total_s = start.elapsed().as_secs_f64();
    if let Some(e) = print_error {
        return Err(e.context("printing the answer"));
    }
    writeln!(out)?;
    let prefill_s = first_token_at.unwrap_or(total_s);
    let new = generation.tokens.len();
    let decode_s = (total_s - prefill_s).max(1e-9);
    eprintln!(
        "[generate] loaded in {load_s:.2} s; prompt {} tokens in {prefill_s:.2} s ({:.1} tokens/s); \
         {new} tokens generated in {total_s:.2} s, decode {:.1} tokens/s{}",
        ids.len(),
        ids.len() as f64 / prefill_s.max(1e-9),
        new.saturating_sub(1) as f64 / decode_s,
        if generation.stopped { "" } else { " (stopped at --max-tokens)" },
    );
    Ok(())
}
