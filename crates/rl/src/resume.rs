//! Resumable checkpoints: beside a checkpoint's model files, a `resume/` directory holds what the model alone
//! does not: the AdamW moments and step, the phase and steps done, the GRPO sampler's RNG position, the run
//! config and the summary so far. Only the newest checkpoint keeps its `resume/` (optimizer state is twice the
//! model), and it is written under a temporary name and renamed, so a kill while writing leaves the previous one.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use userrl_nn::checkpoint::{self, CheckpointError};
use userrl_nn::tokenizer::Tokenizer;
use userrl_nn::train::TrainableLlama;

use crate::config::RunConfig;
use crate::train::RunSummary;

pub const RESUME_DIR: &str = "resume";
const STATE_FILE: &str = "state.json";
const OPTIMIZER_FILE: &str = "optimizer.bin";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{path} is corrupt: {message}")]
    Corrupt { path: String, message: String },
    #[error("no resumable checkpoint under {0} (checkpoints are resumable when `checkpoint.every` > 0)")]
    NotFound(String),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{0}")]
    Model(String),
}

fn io(path: &Path, e: impl std::fmt::Display) -> ResumeError {
    ResumeError::Io { path: path.display().to_string(), message: e.to_string() }
}

/// Which phase a checkpoint was taken in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Sft,
    Grpo,
}

/// How far a run got: `step` steps of `phase` are done (and every step of the phases before it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Progress {
    pub phase: Phase,
    pub step: usize,
}

impl Progress {
    /// The checkpoint directory name (`step-00012` for GRPO, as before resuming existed; `sft-step-00012`).
    pub fn dir_name(&self) -> String {
        match self.phase {
            Phase::Sft => format!("sft-step-{:05}", self.step),
            Phase::Grpo => format!("step-{:05}", self.step),
        }
    }
}

/// A ChaCha8 generator's exact position (the u128 word position as a string: JSON numbers stop at 2^53).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: Vec<u8>,
    pub stream: u64,
    pub word_pos: String,
}

impl RngState {
    pub fn of(rng: &ChaCha8Rng) -> RngState {
        RngState { seed: rng.get_seed().to_vec(), stream: rng.get_stream(), word_pos: rng.get_word_pos().to_string() }
    }

    pub fn restore(&self) -> Result<ChaCha8Rng, String> {
        use rand::SeedableRng;
        let seed: [u8; 32] = self.seed.as_slice().try_into().map_err(|_| "the RNG seed is not 32 bytes".to_string())?;
        let pos: u128 = self.word_pos.parse().map_err(|e| format!("RNG word position: {e}"))?;
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(pos);
        Ok(rng)
    }
}

/// `resume/state.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResumeState {
    pub version: u32,
    pub progress: Progress,
    /// AdamW steps taken (bias correction continues from here).
    pub adam_step: u64,
    /// Parameters (the optimizer file holds two moments of this many f32).
    pub params: usize,
    /// The GRPO task/seed sampler at the start of the next step (absent before GRPO).
    pub grpo_rng: Option<RngState>,
    pub summary: RunSummary,
    pub config: RunConfig,
}

/// A checkpoint loaded for resuming.
pub struct Resumed {
    pub dir: PathBuf,
    pub state: ResumeState,
    pub trainable: TrainableLlama,
    pub tokenizer: Tokenizer,
}

/// Writes the model into `dir` and the resume state into `dir/resume`, then drops the `resume/` of every other
/// checkpoint under `out`.
pub fn save(
    out: &Path,
    dir: &Path,
    trainable: &TrainableLlama,
    tokenizer: &Tokenizer,
    state: &ResumeState,
) -> Result<(), ResumeError> {
    checkpoint::save(&trainable.to_llama(), tokenizer.data(), dir)?;
    let tmp = dir.join(format!("{RESUME_DIR}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    let path = tmp.join(OPTIMIZER_FILE);
    let file = std::fs::File::create(&path).map_err(|e| io(&path, e))?;
    let mut w = BufWriter::new(file);
    for moment in [&trainable.adam_m, &trainable.adam_v] {
        for chunk in moment.chunks(1 << 16) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_le_bytes()).collect();
            w.write_all(&bytes).map_err(|e| io(&path, e))?;
        }
    }
    w.into_inner().map_err(|e| io(&path, e.error()))?.sync_all().map_err(|e| io(&path, e))?;
    let path = tmp.join(STATE_FILE);
    let json = serde_json::to_vec_pretty(state).map_err(|e| io(&path, e))?;
    std::fs::write(&path, json).map_err(|e| io(&path, e))?;
    let done = dir.join(RESUME_DIR);
    if done.exists() {
        std::fs::remove_dir_all(&done).map_err(|e| io(&done, e))?;
    }
    std::fs::rename(&tmp, &done).map_err(|e| io(&done, e))?;
    prune(out, dir)
}

fn prune(out: &Path, keep: &Path) -> Result<(), ResumeError> {
    for dir in checkpoints(out)? {
        if dir != keep {
            let old = dir.join(RESUME_DIR);
            std::fs::remove_dir_all(&old).map_err(|e| io(&old, e))?;
        }
    }
    Ok(())
}

/// Checkpoint directories under `out` that hold a finished `resume/`.
fn checkpoints(out: &Path) -> Result<Vec<PathBuf>, ResumeError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(out).map_err(|e| io(out, e))? {
        let dir = entry.map_err(|e| io(out, e))?.path();
        if dir.join(RESUME_DIR).join(STATE_FILE).is_file() {
            found.push(dir);
        }
    }
    Ok(found)
}

fn read_state(dir: &Path) -> Result<ResumeState, ResumeError> {
    let path = dir.join(RESUME_DIR).join(STATE_FILE);
    let text = std::fs::read(&path).map_err(|e| io(&path, e))?;
    let state: ResumeState = serde_json::from_slice(&text)
        .map_err(|e| ResumeError::Corrupt { path: path.display().to_string(), message: e.to_string() })?;
    if state.version != FORMAT_VERSION {
        return Err(ResumeError::Corrupt {
            path: path.display().to_string(),
            message: format!("format version {} (this build reads {FORMAT_VERSION})", state.version),
        });
    }
    Ok(state)
}

/// The resumable checkpoint under `out` that got furthest.
pub fn latest(out: &Path) -> Result<PathBuf, ResumeError> {
    let mut best: Option<(Progress, PathBuf)> = None;
    for dir in checkpoints(out)? {
        let progress = read_state(&dir)?.progress;
        if best.as_ref().is_none_or(|(p, _)| progress > *p) {
            best = Some((progress, dir));
        }
    }
    best.map(|(_, d)| d).ok_or_else(|| ResumeError::NotFound(out.display().to_string()))
}

/// Loads a resumable checkpoint: the model bit-exact, the AdamW moments and step, and the state.
pub fn load(dir: &Path) -> Result<Resumed, ResumeError> {
    let state = read_state(dir)?;
    let loaded = checkpoint::load(dir)?;
    let mut trainable = TrainableLlama::from_llama(&loaded.model).map_err(|e| ResumeError::Model(e.to_string()))?;
    let n = trainable.params.len();
    let path = dir.join(RESUME_DIR).join(OPTIMIZER_FILE);
    if state.params != n {
        return Err(ResumeError::Corrupt {
            path: path.display().to_string(),
            message: format!("state says {} parameters, the model has {n}", state.params),
        });
    }
    let file = std::fs::File::open(&path).map_err(|e| io(&path, e))?;
    let size = file.metadata().map_err(|e| io(&path, e))?.len();
    if size != (2 * n * 4) as u64 {
        return Err(ResumeError::Corrupt {
            path: path.display().to_string(),
            message: format!("{size} bytes, expected {} (two moments of {n} f32)", 2 * n * 4),
        });
    }
    let mut r = BufReader::new(file);
    let mut bytes = vec![0u8; 4 << 16];
    for moment in [&mut trainable.adam_m, &mut trainable.adam_v] {
        for chunk in moment.chunks_mut(1 << 16) {
            let b = &mut bytes[..chunk.len() * 4];
            r.read_exact(b).map_err(|e| io(&path, e))?;
            for (x, le) in chunk.iter_mut().zip(b.chunks_exact(4)) {
                *x = f32::from_le_bytes([le[0], le[1], le[2], le[3]]);
            }
        }
    }
    trainable.step = state.adam_step;
    Ok(Resumed { dir: dir.to_path_buf(), state, trainable, tokenizer: loaded.tokenizer })
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn rng_state_restores_the_exact_stream_position() {
        let mut rng = ChaCha8Rng::seed_from_u64(42 ^ 0x6790);
        for _ in 0..7 {
            let _: u64 = rng.random();
        }
        let _: f64 = rng.random();
        let state = RngState::of(&rng);
        let json = serde_json::to_string(&state).unwrap();
        let mut back = serde_json::from_str::<RngState>(&json).unwrap().restore().unwrap();
        let want: Vec<u64> = (0..20).map(|_| rng.random()).collect();
        let got: Vec<u64> = (0..20).map(|_| back.random()).collect();
        assert_eq!(got, want);
        assert!(RngState { seed: vec![1, 2], stream: 0, word_pos: "0".into() }.restore().is_err());
    }

    #[test]
    fn progress_orders_sft_before_grpo() {
        let sft = Progress { phase: Phase::Sft, step: 150 };
        let grpo = Progress { phase: Phase::Grpo, step: 1 };
        assert!(grpo > sft);
        assert_eq!(grpo.dir_name(), "step-00001");
        assert_eq!(sft.dir_name(), "sft-step-00150");
    }
}
