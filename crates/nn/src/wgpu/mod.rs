//! The wgpu backend: adapter selection, f32 tensors in GPU storage buffers (upload / download), and the WGSL
//! kernels of the LLaMA inference forward (`shaders/*.wgsl`), recorded into a [`Batch`] and submitted at once.
//! Every kernel has the semantics of its CPU counterpart in `model.rs`, which the conformance tests hold it to.
//! The training ops (backward passes, chunked LM head, AdamW, gradient norm, GRPO loss) are in `train_ops.rs`,
//! held to `cpu_ops` by `tests/wgpu_backward.rs`.
//!
//! Portability: the device is opened with the WebGPU default limits (one storage binding <= 128 MiB, 8 storage
//! buffers per stage, 16 KiB workgroup memory, 65,535 workgroups per dimension), so what runs on lavapipe runs on
//! any WebGPU implementation. Matrices larger than one binding are split by rows ([`Matrix`]); large grids are
//! folded into two dimensions.

pub mod bench;
mod llama;
mod train_ops;
mod trainer;

pub use llama::{WgpuKvCache, WgpuLlama};
pub use train_ops::{HEAD_STATE, MatView};
pub use trainer::WgpuTrainer;

use std::sync::Arc;

use ::wgpu::util::DeviceExt;

/// The largest storage binding WebGPU guarantees (128 MiB).
pub const MAX_BINDING_BYTES: u64 = 128 << 20;
const MAX_GROUPS_PER_DIM: u32 = 65_535;
/// Bytes of uniform parameters per dispatch; 256 is the WebGPU `minUniformBufferOffsetAlignment`.
const PARAM_STRIDE: u64 = 256;
const PARAM_BYTES: u64 = 128;
const PARAM_WORDS: usize = PARAM_BYTES as usize / 4;
/// Query rows per workgroup of the blocked attention kernels (`attention_flash*.wgsl`).
const FLASH_ROWS: usize = 16;
/// Workgroups a many-row product aims for on GPUs before it is split along k (see [`Device::split_k_target`]).
const SPLIT_K_TARGET: usize = 256;
/// Split-k bounds: every part but the last keeps at least 4 of the shared kernels' 16-deep k slabs; at most 16
/// parts.
const SPLIT_K_MIN: usize = 64;
const SPLIT_K_MAX: usize = 16;
/// Keys per workgroup of the blocked attention's parts on GPUs (see [`Device::attention_key_split`]); the kernels
/// walk keys 64 at a time, so a split is a multiple of 64.
const KEY_SPLIT: usize = 128;
const FLASH_KEYS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum WgpuError {
    #[error(
        "no wgpu adapter found (backends {backends}): install a Vulkan driver — on Debian run scripts/setup, \
         which installs Mesa's lavapipe (mesa-vulkan-drivers) — or set WGPU_BACKEND"
    )]
    NoAdapter { backends: String },
    #[error("could not open the wgpu device on `{adapter}`: {message}")]
    RequestDevice { adapter: String, message: String },
    #[error("a tensor of {bytes} bytes is past the largest storage binding ({max} bytes)")]
    TooLarge { bytes: u64, max: u64 },
    #[error("unsupported shape for the wgpu kernels: {0}")]
    Shape(String),
    #[error("the GPU could not allocate {bytes} bytes: {message}")]
    OutOfMemory { bytes: u64, message: String },
    #[error("wgpu validation failed: {0}")]
    Validation(String),
    #[error("reading a buffer back from the GPU failed: {0}")]
    Readback(String),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
}

/// Compute pipelines, one per kernel entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    MatmulTiled,
    MatmulRows,
    RmsNorm,
    QkvRope,
    Attention,
    Swiglu,
    Add,
    Embed,
    MatmulGeneral,
    RmsNormRstd,
    RmsNormBwdDx,
    RmsNormBwdDw,
    RopeRows,
    AttentionTrain,
    AttentionBwdPrep,
    AttentionBwdDq,
    AttentionBwdDkv,
    SwigluOut,
    SwigluBwd,
    EmbedBwd,
    HeadUpdate,
    HeadGrad,
    AdamW,
    SumsqPartial,
    SumsqFinal,
    AdamWClipped,
    GrpoLoss,
    MatmulNn,
    MatmulTn,
    MatmulTiledShared,
    MatmulNnShared,
    MatmulTnShared,
    FlashAttention,
    FlashAttentionTrain,
    FlashAttentionBwdDq,
    FlashAttentionBwdDkv,
    GroupSum,
    SplitKSum,
    FlashAttentionSplit,
    AttentionMerge,
    FlashAttentionTrainSplit,
    AttentionMergeTrain,
}

impl Kernel {
    /// The workgroup-memory twin of a register-blocked matmul kernel (same parameters, bindings and grid).
    fn shared_twin(self) -> Kernel {
        match self {
            Kernel::MatmulTiled => Kernel::MatmulTiledShared,
            Kernel::MatmulNn => Kernel::MatmulNnShared,
            Kernel::MatmulTn => Kernel::MatmulTnShared,
            other => other,
        }
    }
}

/// How the many-row matmuls (prefill, training) tile their work. Both compute the same 64×64 tile of the output
/// per workgroup, 4×4 per invocation, and agree to rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulTiles {
    /// Operands straight from storage into registers: best on CPU drivers (lavapipe), where a workgroup barrier
    /// switches coroutines and the caches serve the reuse.
    Registers,
    /// Operands staged through workgroup memory 16 k at a time: 16× fewer global loads; best on GPUs.
    Shared,
}

impl MatmulTiles {
    /// `USERRL_WGPU_MATMUL=registers|shared` when set (for benchmarks that compare them), else by adapter kind.
    fn choose(info: &::wgpu::AdapterInfo) -> MatmulTiles {
        match std::env::var("USERRL_WGPU_MATMUL").as_deref() {
            Ok("registers") => MatmulTiles::Registers,
            Ok("shared") => MatmulTiles::Shared,
            _ if info.device_type == ::wgpu::DeviceType::Cpu => MatmulTiles::Registers,
            _ => MatmulTiles::Shared,
        }
    }
}

const KERNELS: [(Kernel, &str, &str); 42] = [
    (Kernel::MatmulTiled, "matmul", "matmul_tiled"),
    (Kernel::MatmulRows, "matmul", "matmul_rows"),
    (Kernel::RmsNorm, "rmsnorm", "rms_norm"),
    (Kernel::QkvRope, "qkv_rope", "qkv_rope"),
    (Kernel::Attention, "attention", "attention"),
    (Kernel::Swiglu, "elementwise", "swiglu"),
    (Kernel::Add, "elementwise", "add"),
    (Kernel::Embed, "embed", "embed"),
    (Kernel::MatmulGeneral, "matmul_general", "matmul_general"),
    (Kernel::RmsNormRstd, "rmsnorm", "rms_norm_rstd"),
    (Kernel::RmsNormBwdDx, "rmsnorm_bwd", "rms_norm_bwd_dx"),
    (Kernel::RmsNormBwdDw, "rmsnorm_bwd", "rms_norm_bwd_dw"),
    (Kernel::RopeRows, "rope", "rope_rows"),
    (Kernel::AttentionTrain, "attention", "attention_train"),
    (Kernel::AttentionBwdPrep, "attention", "attention_bwd_prep"),
    (Kernel::AttentionBwdDq, "attention_bwd", "attention_bwd_dq"),
    (Kernel::AttentionBwdDkv, "attention_bwd", "attention_bwd_dkv"),
    (Kernel::SwigluOut, "elementwise", "swiglu_out"),
    (Kernel::SwigluBwd, "elementwise", "swiglu_bwd"),
    (Kernel::EmbedBwd, "embed", "embed_bwd"),
    (Kernel::HeadUpdate, "head", "head_update"),
    (Kernel::HeadGrad, "head", "head_grad"),
    (Kernel::AdamW, "optim", "adamw"),
    (Kernel::SumsqPartial, "optim", "sumsq_partial"),
    (Kernel::SumsqFinal, "optim", "sumsq_final"),
    (Kernel::AdamWClipped, "optim", "adamw_clipped"),
    (Kernel::GrpoLoss, "grpo", "grpo_loss"),
    (Kernel::MatmulNn, "matmul_vec4", "matmul_nn"),
    (Kernel::MatmulTn, "matmul_vec4", "matmul_tn"),
    (Kernel::MatmulTiledShared, "matmul", "matmul_tiled_shared"),
    (Kernel::MatmulNnShared, "matmul_vec4", "matmul_nn_shared"),
    (Kernel::MatmulTnShared, "matmul_vec4", "matmul_tn_shared"),
    (Kernel::FlashAttention, "attention_flash", "flash_attention"),
    (Kernel::FlashAttentionTrain, "attention_flash", "flash_attention_train"),
    (Kernel::FlashAttentionBwdDq, "attention_flash_bwd", "flash_attention_bwd_dq"),
    (Kernel::FlashAttentionBwdDkv, "attention_flash_bwd", "flash_attention_bwd_dkv"),
    (Kernel::GroupSum, "elementwise", "group_sum"),
    (Kernel::SplitKSum, "splitk", "split_k_sum"),
    (Kernel::FlashAttentionSplit, "attention_flash", "flash_attention_split"),
    (Kernel::AttentionMerge, "attention_merge", "attention_merge"),
    (Kernel::FlashAttentionTrainSplit, "attention_flash", "flash_attention_train_split"),
    (Kernel::AttentionMergeTrain, "attention_merge", "attention_merge_train"),
];

const SHADERS: [(&str, &str); 18] = [
    ("matmul", include_str!("../../shaders/matmul.wgsl")),
    ("rmsnorm", include_str!("../../shaders/rmsnorm.wgsl")),
    ("rope", include_str!("../../shaders/rope.wgsl")),
    ("attention", include_str!("../../shaders/attention.wgsl")),
    ("elementwise", include_str!("../../shaders/elementwise.wgsl")),
    ("embed", include_str!("../../shaders/embed.wgsl")),
    ("matmul_general", include_str!("../../shaders/matmul_general.wgsl")),
    ("rmsnorm_bwd", include_str!("../../shaders/rmsnorm_bwd.wgsl")),
    ("attention_bwd", include_str!("../../shaders/attention_bwd.wgsl")),
    ("head", include_str!("../../shaders/head.wgsl")),
    ("optim", include_str!("../../shaders/optim.wgsl")),
    ("grpo", include_str!("../../shaders/grpo.wgsl")),
    ("matmul_vec4", include_str!("../../shaders/matmul_vec4.wgsl")),
    ("attention_flash", include_str!("../../shaders/attention_flash.wgsl")),
    ("attention_flash_bwd", include_str!("../../shaders/attention_flash_bwd.wgsl")),
    ("splitk", include_str!("../../shaders/splitk.wgsl")),
    ("qkv_rope", include_str!("../../shaders/qkv_rope.wgsl")),
    ("attention_merge", include_str!("../../shaders/attention_merge.wgsl")),
];

struct Inner {
    device: ::wgpu::Device,
    queue: ::wgpu::Queue,
    info: ::wgpu::AdapterInfo,
    pipelines: Vec<::wgpu::ComputePipeline>,
    /// Per kernel: dispatches and GPU nanoseconds, when `USERRL_WGPU_PROFILE=1` and the adapter has timestamps.
    profile: Option<std::sync::Mutex<Vec<(u64, f64)>>>,
}

/// GPU time of one kernel over the dispatches since the last [`Device::take_profile`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct KernelTime {
    pub kernel: &'static str,
    pub dispatches: u64,
    pub ms: f64,
}

/// Timestamps per submission: two per dispatch (wgpu's QUERY_SET_MAX_QUERIES is 4096).
const PROFILED_DISPATCHES: usize = 2048;

/// An opened wgpu device with the kernels compiled. Cheap to clone (shared).
#[derive(Clone)]
pub struct Device {
    inner: Arc<Inner>,
    /// Largest storage buffer this handle creates (lowered by [`Device::with_binding_limit`]).
    max_binding: u64,
    matmul_tiles: MatmulTiles,
    /// See [`Device::blocked_attention`].
    blocked_attention: bool,
    /// See [`Device::split_k_target`].
    split_k_target: usize,
    /// See [`Device::attention_key_split`].
    key_split: usize,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "wgpu::Device({} {:?} on {:?})",
            self.inner.info.name, self.inner.info.device_type, self.inner.info.backend
        )
    }
}

fn instance() -> (::wgpu::Instance, ::wgpu::Backends) {
    let desc = ::wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    let backends = desc.backends;
    (::wgpu::Instance::new(desc), backends)
}

/// Hardware first, then native APIs before GL (whose shader compiles are slow on llvmpipe).
fn rank(info: &::wgpu::AdapterInfo) -> (u8, u8) {
    use ::wgpu::DeviceType::*;
    let kind = match info.device_type {
        DiscreteGpu => 0,
        IntegratedGpu => 1,
        VirtualGpu => 2,
        Cpu => 3,
        Other => 4,
    };
    (kind, u8::from(info.backend == ::wgpu::Backend::Gl))
}

/// `USERRL_WGPU_PROFILE=1`: time every kernel (see [`Device::take_profile`]).
fn profiling_asked() -> bool {
    std::env::var("USERRL_WGPU_PROFILE").is_ok_and(|v| v == "1")
}

fn is_hardware(info: &::wgpu::AdapterInfo) -> bool {
    matches!(info.device_type, ::wgpu::DeviceType::DiscreteGpu | ::wgpu::DeviceType::IntegratedGpu)
}

impl Device {
    /// A hardware GPU (discrete or integrated) when there is one; `None` means "use the CPU backend".
    pub fn auto() -> Option<Device> {
        let (instance, _) = instance();
        let mut adapters: Vec<_> = pollster::block_on(instance.enumerate_adapters(::wgpu::Backends::all()))
            .into_iter()
            .filter(|a| is_hardware(&a.get_info()))
            .collect();
        adapters.sort_by_key(|a| rank(&a.get_info()));
        adapters.into_iter().find_map(|a| Device::open(a, profiling_asked()).ok())
    }

    /// The best wgpu adapter of any kind, software ones (lavapipe) included.
    pub fn wgpu() -> Result<Device, WgpuError> {
        Device::best_wgpu(profiling_asked())
    }

    /// [`Device::wgpu`] with per-kernel GPU timings ([`Device::take_profile`]) where the adapter has timestamp
    /// queries: each dispatch then runs in a compute pass of its own, a little slower.
    pub fn wgpu_profiled() -> Result<Device, WgpuError> {
        Device::best_wgpu(true)
    }

    fn best_wgpu(profile: bool) -> Result<Device, WgpuError> {
        let (instance, backends) = instance();
        let mut adapters = pollster::block_on(instance.enumerate_adapters(backends));
        adapters.sort_by_key(|a| rank(&a.get_info()));
        let mut last = None;
        for adapter in adapters {
            match Device::open(adapter, profile) {
                Ok(device) => return Ok(device),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(WgpuError::NoAdapter { backends: format!("{backends:?}") }))
    }

    fn open(adapter: ::wgpu::Adapter, profile: bool) -> Result<Device, WgpuError> {
        let info = adapter.get_info();
        let limits = ::wgpu::Limits::default();
        // Profiling times each dispatch in its own pass: a diagnostic mode, slower than the normal one.
        let profiling = profile && adapter.features().contains(::wgpu::Features::TIMESTAMP_QUERY);
        let desc = ::wgpu::DeviceDescriptor {
            label: Some("userrl-nn"),
            required_features: if profiling { ::wgpu::Features::TIMESTAMP_QUERY } else { ::wgpu::Features::empty() },
            required_limits: limits.clone(),
            experimental_features: ::wgpu::ExperimentalFeatures::disabled(),
            memory_hints: ::wgpu::MemoryHints::Performance,
            trace: ::wgpu::Trace::Off,
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))
            .map_err(|e| WgpuError::RequestDevice { adapter: info.name.clone(), message: e.to_string() })?;
        let scope = device.push_error_scope(::wgpu::ErrorFilter::Validation);
        let modules: Vec<_> = SHADERS
            .iter()
            .map(|(name, src)| {
                let module = device.create_shader_module(::wgpu::ShaderModuleDescriptor {
                    label: Some(name),
                    source: ::wgpu::ShaderSource::Wgsl((*src).into()),
                });
                (*name, module)
            })
            .collect();
        // On CPU drivers (lavapipe) a workgroup barrier switches coroutines: the decode matmul reduces over one SIMD
        // vector of 8 there (4x faster), and over 64 invocations on GPUs (coalesced loads, full warps).
        let rows_wg: &[(&str, f64)] = if info.device_type == ::wgpu::DeviceType::Cpu { &[("WG", 8.0)] } else { &[] };
        // The workgroup-memory matmuls load the next k slab while they multiply the current one, unless
        // `USERRL_WGPU_PREFETCH=off` (for benchmarks that compare).
        let no_prefetch: &[(&str, f64)] =
            if std::env::var("USERRL_WGPU_PREFETCH").as_deref() == Ok("off") { &[("PREFETCH", 0.0)] } else { &[] };
        let pipelines = KERNELS
            .iter()
            .map(|(kernel, file, entry)| {
                let module = &modules.iter().find(|(n, _)| n == file).map(|(_, m)| m);
                let constants = match kernel {
                    Kernel::MatmulRows => rows_wg,
                    Kernel::MatmulTiledShared | Kernel::MatmulNnShared | Kernel::MatmulTnShared => no_prefetch,
                    _ => &[],
                };
                device.create_compute_pipeline(&::wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: None,
                    module: module.unwrap_or(&modules[0].1),
                    entry_point: Some(entry),
                    compilation_options: ::wgpu::PipelineCompilationOptions { constants, ..Default::default() },
                    cache: None,
                })
            })
            .collect();
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(WgpuError::Validation(e.to_string()));
        }
        let max_binding = MAX_BINDING_BYTES.min(limits.max_storage_buffer_binding_size);
        let matmul_tiles = MatmulTiles::choose(&info);
        let blocked_attention = std::env::var("USERRL_WGPU_ATTENTION").as_deref() != Ok("rows");
        let split_k_target = match std::env::var("USERRL_WGPU_SPLIT_K") {
            Ok(v) if v == "off" => 0,
            Ok(v) => v.parse().unwrap_or(SPLIT_K_TARGET),
            Err(_) => SPLIT_K_TARGET,
        };
        let key_split = match std::env::var("USERRL_WGPU_KEY_SPLIT") {
            Ok(v) if v == "off" => 0,
            Ok(v) => v.parse().map(round_key_split).unwrap_or(KEY_SPLIT),
            Err(_) if info.device_type == ::wgpu::DeviceType::Cpu => 0,
            Err(_) => KEY_SPLIT,
        };
        let profile = profiling.then(|| std::sync::Mutex::new(vec![(0, 0.0); KERNELS.len()]));
        let inner = Arc::new(Inner { device, queue, info, pipelines, profile });
        Ok(Device { inner, max_binding, matmul_tiles, blocked_attention, split_k_target, key_split })
    }

    pub fn info(&self) -> &::wgpu::AdapterInfo {
        &self.inner.info
    }

    /// True for a discrete or integrated GPU, false for software adapters such as lavapipe.
    pub fn is_hardware(&self) -> bool {
        is_hardware(&self.inner.info)
    }

    /// The same device with a lower cap on one storage buffer, so that tests exercise the row-chunked matrices
    /// (embedding, LM head) on small models.
    pub fn with_binding_limit(&self, bytes: u64) -> Device {
        Device { max_binding: self.max_binding.min(bytes), ..self.clone() }
    }

    /// The same device with the many-row matmuls tiled as `tiles` says (tests run both on any adapter).
    pub fn with_matmul_tiles(&self, tiles: MatmulTiles) -> Device {
        Device { matmul_tiles: tiles, ..self.clone() }
    }

    pub fn matmul_tiles(&self) -> MatmulTiles {
        self.matmul_tiles
    }

    /// Whether prefill and training attention run through the blocked (flash-style) kernels
    /// (`attention_flash*.wgsl`) for head dims they hold (up to 64, a multiple of 4: SmolLM2's and most small
    /// LLaMAs'), rather than one workgroup per (row, head). On by default: 3-6× faster on lavapipe already;
    /// `USERRL_WGPU_ATTENTION=rows` turns it off (for benchmarks that compare them).
    pub fn blocked_attention(&self) -> bool {
        self.blocked_attention
    }

    /// The same device with the blocked attention kernels on or off (tests run both).
    pub fn with_blocked_attention(&self, on: bool) -> Device {
        Device { blocked_attention: on, ..self.clone() }
    }

    /// With workgroup-memory tiles ([`MatmulTiles::Shared`], GPUs), a many-row product with fewer 64×64 output
    /// tiles than this many workgroups is split along k into parts that run side by side, then summed
    /// (`splitk.wgsl`): a prompt's or a training step's `[512, 576]` products have 72 tiles, and each tile's
    /// workgroup otherwise walks all of k alone while most of the GPU waits. 256 by default;
    /// `USERRL_WGPU_SPLIT_K=off` (or a number of workgroups) for benchmarks that compare.
    pub fn split_k_target(&self) -> usize {
        self.split_k_target
    }

    /// The same device aiming split-k products at `groups` workgroups (0: never split).
    pub fn with_split_k_target(&self, groups: usize) -> Device {
        Device { split_k_target: groups, ..self.clone() }
    }

    /// Keys per workgroup of the blocked attention: a prompt whose rows see more keys than this runs each row
    /// block's keys as parts of this many side by side, then merges them by their log-sum-exps (as flash-decoding
    /// does), so that the long rows at a prompt's end do not each walk every key alone; a short training batch
    /// splits its forward and backward the same way. 128 on GPUs, 0 (off) on CPU drivers, where there are no idle
    /// SMs to fill; `USERRL_WGPU_KEY_SPLIT=off|<keys>` for benchmarks that compare.
    pub fn attention_key_split(&self) -> usize {
        self.key_split
    }

    /// The same device splitting attention every `keys` keys (rounded up to a multiple of 64; 0: never).
    pub fn with_attention_key_split(&self, keys: usize) -> Device {
        Device { key_split: round_key_split(keys), ..self.clone() }
    }

    /// GPU time per kernel since the last call, slowest first; `None` unless the device was opened with
    /// `USERRL_WGPU_PROFILE=1` on an adapter with timestamp queries.
    pub fn take_profile(&self) -> Option<Vec<KernelTime>> {
        let profile = self.inner.profile.as_ref()?;
        let mut totals = match profile.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut out: Vec<KernelTime> = KERNELS
            .iter()
            .zip(totals.iter())
            .filter(|(_, (n, _))| *n > 0)
            .map(|((_, _, entry), (n, ns))| KernelTime { kernel: entry, dispatches: *n, ms: ns / 1e6 })
            .collect();
        out.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        totals.iter_mut().for_each(|t| *t = (0, 0.0));
        Some(out)
    }

    fn check_size(&self, bytes: u64) -> Result<(), WgpuError> {
        if bytes > self.max_binding {
            return Err(WgpuError::TooLarge { bytes, max: self.max_binding });
        }
        Ok(())
    }

    fn storage(&self, bytes: u64) -> Result<::wgpu::Buffer, WgpuError> {
        self.check_size(bytes)?;
        // Without a scope an allocation the device cannot make reaches wgpu's default handler, which panics: a
        // server would lose its engine thread to one long context.
        let scope = self.inner.device.push_error_scope(::wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.inner.device.create_buffer(&::wgpu::BufferDescriptor {
            label: None,
            // Never zero-sized: a binding needs at least one element.
            size: bytes.max(16).next_multiple_of(16),
            usage: ::wgpu::BufferUsages::STORAGE | ::wgpu::BufferUsages::COPY_SRC | ::wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        match pollster::block_on(scope.pop()) {
            Some(e) => Err(WgpuError::OutOfMemory { bytes, message: e.to_string() }),
            None => Ok(buffer),
        }
    }

    /// A zero-filled tensor of `len` floats.
    pub fn zeros(&self, len: usize) -> Result<Tensor, WgpuError> {
        Ok(Tensor { buf: self.storage(len as u64 * 4)?, len })
    }

    /// Copies `data` into a new GPU tensor.
    pub fn upload(&self, data: &[f32]) -> Result<Tensor, WgpuError> {
        let t = self.zeros(data.len())?;
        self.inner.queue.write_buffer(&t.buf, 0, bytemuck::cast_slice(data));
        Ok(t)
    }

    /// Copies `data` (token ids) into a new GPU buffer of u32.
    pub fn upload_u32(&self, data: &[u32]) -> Result<Tensor, WgpuError> {
        let t = self.zeros(data.len())?;
        self.inner.queue.write_buffer(&t.buf, 0, bytemuck::cast_slice(data));
        Ok(t)
    }

    /// Overwrites the start of `t` with `data`.
    pub fn write(&self, t: &Tensor, data: &[f32]) -> Result<(), WgpuError> {
        if data.len() > t.len {
            return Err(WgpuError::Shape(format!("writing {} floats into a tensor of {}", data.len(), t.len)));
        }
        self.inner.queue.write_buffer(&t.buf, 0, bytemuck::cast_slice(data));
        Ok(())
    }

    /// Rows per piece of a `[rows, cols]` matrix: as many as one storage binding holds.
    fn rows_per_chunk(&self, cols: usize) -> Result<usize, WgpuError> {
        let per_chunk = (self.max_binding / (cols as u64 * 4).max(1)) as usize;
        if per_chunk == 0 {
            return Err(WgpuError::TooLarge { bytes: cols as u64 * 4, max: self.max_binding });
        }
        Ok(per_chunk)
    }

    /// A zero `[rows, cols]` matrix split as [`Device::upload_matrix`] splits one.
    pub fn zeros_matrix(&self, rows: usize, cols: usize) -> Result<Matrix, WgpuError> {
        if rows == 0 || cols == 0 {
            return Err(WgpuError::Shape(format!("a [{rows}, {cols}] matrix")));
        }
        let per_chunk = self.rows_per_chunk(cols)?;
        let chunks = (0..rows)
            .step_by(per_chunk)
            .map(|start| Ok((start, self.zeros(per_chunk.min(rows - start) * cols)?)))
            .collect::<Result<Vec<_>, WgpuError>>()?;
        Ok(Matrix { chunks, rows, cols })
    }

    /// A `[rows, cols]` row-major matrix, split by rows into pieces of at most one storage binding.
    pub fn upload_matrix(&self, data: &[f32], rows: usize, cols: usize) -> Result<Matrix, WgpuError> {
        if data.len() != rows * cols || rows == 0 || cols == 0 {
            return Err(WgpuError::Shape(format!("{} values for a [{rows}, {cols}] matrix", data.len())));
        }
        let per_chunk = self.rows_per_chunk(cols)?;
        let mut chunks = Vec::new();
        let mut start = 0;
        while start < rows {
            let n = per_chunk.min(rows - start);
            chunks.push((start, self.upload(&data[start * cols..(start + n) * cols])?));
            start += n;
        }
        Ok(Matrix { chunks, rows, cols })
    }

    /// Reads `t` back (waits for the work submitted before).
    pub fn download(&self, t: &Tensor) -> Result<Vec<f32>, WgpuError> {
        self.download_range(t, 0, t.len)
    }

    /// Reads floats `offset..offset + len` of `t` back.
    pub fn download_range(&self, t: &Tensor, offset: usize, len: usize) -> Result<Vec<f32>, WgpuError> {
        if offset + len > t.len {
            return Err(WgpuError::Shape(format!("reading {offset}..{} of a tensor of {}", offset + len, t.len)));
        }
        if len == 0 {
            return Ok(Vec::new());
        }
        let dev = &self.inner.device;
        let bytes = (len as u64 * 4).next_multiple_of(4);
        let staging = dev.create_buffer(&::wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes,
            usage: ::wgpu::BufferUsages::MAP_READ | ::wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = dev.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&t.buf, offset as u64 * 4, &staging, 0, bytes);
        self.inner.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(::wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        dev.poll(::wgpu::PollType::wait_indefinitely()).map_err(|e| WgpuError::Readback(e.to_string()))?;
        rx.recv().map_err(|e| WgpuError::Readback(e.to_string()))?.map_err(|e| WgpuError::Readback(e.to_string()))?;
        let out = {
            let view = staging.slice(..).get_mapped_range().map_err(|e| WgpuError::Readback(e.to_string()))?;
            bytemuck::cast_slice::<u8, f32>(&view).to_vec()
        };
        staging.unmap();
        Ok(out)
    }

    /// Waits until everything submitted so far has run.
    pub fn wait(&self) -> Result<(), WgpuError> {
        self.inner
            .device
            .poll(::wgpu::PollType::wait_indefinitely())
            .map_err(|e| WgpuError::Readback(e.to_string()))?;
        Ok(())
    }

    /// Starts recording kernels; nothing runs until [`Batch::submit`].
    pub fn batch(&self) -> Batch<'_> {
        Batch { dev: self, ops: Vec::new(), scratch: Default::default(), split_products: 0 }
    }

    /// The `(cos, sin)` table for RoPE at positions `0..positions`, computed exactly as model.rs `rope` does.
    pub fn rope_table(&self, theta: f32, head_dim: usize, positions: usize) -> Result<Tensor, WgpuError> {
        let half = head_dim / 2;
        let mut table = Vec::with_capacity(positions * half * 2);
        for pos in 0..positions {
            for i in 0..half {
                let freq = theta.powf(-((2 * i) as f32) / head_dim as f32);
                let (sin, cos) = (pos as f32 * freq).sin_cos();
                table.extend_from_slice(&[cos, sin]);
            }
        }
        self.upload(&table)
    }
}

/// A flat f32 (or u32) array in one GPU storage buffer.
#[derive(Clone, Debug)]
pub struct Tensor {
    buf: ::wgpu::Buffer,
    len: usize,
}

impl Tensor {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A row-major `[rows, cols]` matrix in row chunks `(first row, data)`, each within one storage binding.
#[derive(Clone, Debug)]
pub struct Matrix {
    chunks: Vec<(usize, Tensor)>,
    pub rows: usize,
    pub cols: usize,
}

impl Matrix {
    /// Number of row chunks (1 unless the matrix is past 128 MiB).
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }
}

enum Op {
    Dispatch { kernel: Kernel, buffers: Vec<::wgpu::Buffer>, params: [u32; PARAM_WORDS], groups: (u32, u32) },
    Copy { src: ::wgpu::Buffer, src_off: u64, dst: ::wgpu::Buffer, dst_off: u64, bytes: u64 },
    Clear { buf: ::wgpu::Buffer, off: u64, bytes: u64 },
}

/// Folds `n` workgroups into `(x, y)` with `x <= 65,535`.
fn grid(n: usize) -> Result<(u32, u32), WgpuError> {
    let n = n.max(1);
    let x = n.min(MAX_GROUPS_PER_DIM as usize);
    let y = n.div_ceil(x);
    if y > MAX_GROUPS_PER_DIM as usize {
        return Err(WgpuError::Shape(format!("{n} workgroups is past 65,535²")));
    }
    Ok((x as u32, y as u32))
}

/// A key split the kernels can walk: 0 (off) or a multiple of 64.
fn round_key_split(keys: usize) -> usize {
    keys.next_multiple_of(FLASH_KEYS)
}

fn u32_of(what: &str, v: usize) -> Result<u32, WgpuError> {
    u32::try_from(v).map_err(|_| WgpuError::Shape(format!("{what} {v} does not fit the kernels' u32 indices")))
}

fn params(values: &[u32]) -> [u32; PARAM_WORDS] {
    let mut p = [0u32; PARAM_WORDS];
    p[..values.len()].copy_from_slice(values);
    p
}

fn need(what: &str, have: usize, want: usize) -> Result<(), WgpuError> {
    if have < want {
        return Err(WgpuError::Shape(format!("{what} has {have} values, the kernel reads {want}")));
    }
    Ok(())
}

/// Kernels recorded in order, run by one queue submission. Arguments are checked when recorded.
pub struct Batch<'d> {
    dev: &'d Device,
    ops: Vec<Op>,
    /// Buffers for partial results, reused by each kernel pair that needs one (wgpu orders the dispatches that
    /// share a buffer): 0 and 1 for key-split attention, 2 and 3 in turn for split-k products, so that two
    /// independent products in a row (a backward's dx and dw) do not wait on each other's scratch.
    scratch: [Option<Tensor>; 4],
    /// Split-k products recorded so far (which of their two scratch buffers is next).
    split_products: usize,
}

/// How a product is split along k: `splits` parts of `k_per_split` (a multiple of 16) each, the last one shorter
/// where k ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct KSplit {
    splits: usize,
    k_per_split: usize,
}

impl Batch<'_> {
    /// [`Device::blocked_attention`], for a head dim the blocked kernels hold.
    fn blocked_attention_for(&self, head_dim: usize) -> bool {
        self.dev.blocked_attention() && head_dim <= 64 && head_dim.is_multiple_of(4)
    }

    /// The split of an `[m, n]` product over `k` with `tiles` 64×64 output tiles ([`Device::split_k_target`]).
    fn k_split(&self, m: usize, n: usize, k: usize, tiles: usize) -> KSplit {
        let target = self.dev.split_k_target;
        let whole = KSplit { splits: 1, k_per_split: k };
        if self.dev.matmul_tiles != MatmulTiles::Shared || tiles == 0 || tiles >= target {
            return whole;
        }
        let fit = (self.dev.max_binding / (4 * m * n).max(1) as u64) as usize;
        let parts = target.div_ceil(tiles).min(k / SPLIT_K_MIN).min(SPLIT_K_MAX).min(fit);
        if parts < 2 {
            return whole;
        }
        let k_per_split = k.div_ceil(parts).next_multiple_of(16);
        KSplit { splits: k.div_ceil(k_per_split), k_per_split }
    }

    /// Keys per part and parts for a blocked attention over `keys` positions whose output has `out_len` floats:
    /// [`Device::attention_key_split`] keys a part, more where the parts' outputs would pass one binding;
    /// `(0, 1)` when it does not split.
    fn key_parts(&self, blocked: bool, keys: usize, out_len: usize) -> (usize, usize) {
        let key_split = self.dev.key_split;
        if !blocked || key_split == 0 || keys <= key_split {
            return (0, 1);
        }
        let fit = (self.dev.max_binding / (4 * out_len).max(1) as u64) as usize;
        if fit < 2 {
            return (0, 1);
        }
        let key_split = key_split.max(round_key_split(keys.div_ceil(fit)));
        (key_split, keys.div_ceil(key_split))
    }

    /// Scratch buffer `slot` (see `Batch::scratch`) with at least `len` floats, for partial results.
    fn scratch(&mut self, slot: usize, len: usize) -> Result<Tensor, WgpuError> {
        match &self.scratch[slot] {
            Some(t) if t.len >= len => Ok(t.clone()),
            _ => {
                let t = self.dev.zeros(len)?;
                self.scratch[slot] = Some(t.clone());
                Ok(t)
            }
        }
    }

    /// The next split-k product's scratch buffer (2 and 3 in turn).
    fn split_scratch(&mut self, len: usize) -> Result<Tensor, WgpuError> {
        self.split_products += 1;
        self.scratch(2 + self.split_products % 2, len)
    }

    /// `c[c_off + r·ldc + col] = beta · c + Σ_s part[s·m·n + r·n + col]`: the sum of a split-k product's parts.
    #[allow(clippy::too_many_arguments)]
    fn split_k_sum(
        &mut self,
        part: &Tensor,
        splits: usize,
        m: usize,
        n: usize,
        c: &Tensor,
        c_off: usize,
        ldc: usize,
        beta: f32,
    ) -> Result<(), WgpuError> {
        let values = [
            u32_of("m", m)?,
            u32_of("n", n)?,
            splits as u32,
            u32_of("stride", m * n)?,
            u32_of("offset", c_off)?,
            u32_of("stride", ldc)?,
            beta.to_bits(),
        ];
        self.dispatch(Kernel::SplitKSum, &[part, c], &values, (m * n).div_ceil(64))
    }

    fn dispatch(
        &mut self,
        kernel: Kernel,
        buffers: &[&Tensor],
        values: &[u32],
        groups: usize,
    ) -> Result<(), WgpuError> {
        let groups = grid(groups)?;
        let kernel = if self.dev.matmul_tiles == MatmulTiles::Shared { kernel.shared_twin() } else { kernel };
        self.ops.push(Op::Dispatch {
            kernel,
            buffers: buffers.iter().map(|t| t.buf.clone()).collect(),
            params: params(values),
            groups,
        });
        Ok(())
    }

    /// `y[r, y_off + c]` (row stride `ldy`) `= Σ_k x[x_row + r, k] · w[c, k]` for `r < rows`, `c < w.rows`:
    /// model.rs `linear` on rows `x_row..x_row + rows` of `x`, written into a column window of `y`.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_into(
        &mut self,
        x: &Tensor,
        x_row: usize,
        rows: usize,
        w: &Matrix,
        y: &Tensor,
        y_off: usize,
        ldy: usize,
    ) -> Result<(), WgpuError> {
        self.linear_window(x, x_row, rows, w, y, y_off, ldy, 0.0)
    }

    /// [`Batch::linear_into`] as `y = beta · y + x · wᵀ`.
    #[allow(clippy::too_many_arguments)]
    fn linear_window(
        &mut self,
        x: &Tensor,
        x_row: usize,
        rows: usize,
        w: &Matrix,
        y: &Tensor,
        y_off: usize,
        ldy: usize,
        beta: f32,
    ) -> Result<(), WgpuError> {
        let k = w.cols;
        if !k.is_multiple_of(4) {
            return Err(WgpuError::Shape(format!("linear needs the inner dimension {k} to be a multiple of 4")));
        }
        need("linear input", x.len, (x_row + rows) * k)?;
        if rows == 0 {
            return Ok(());
        }
        need("linear output", y.len, y_off + (rows - 1) * ldy + w.rows)?;
        for (row_start, chunk) in &w.chunks {
            self.x_wt(x, x_row * k / 4, rows, chunk, 0, chunk.len / k, k, y, y_off + row_start, ldy, beta)?;
        }
        Ok(())
    }

    /// `y[y_off + r·ldy + c] = beta · y[…] + Σ_k x[4·x_off4 + r·k + k] · w[4·w_off4 + c·k + k]` for `r < rows`,
    /// `c < n`: few rows (decode) through one coalesced reduction per 8 outputs, more through 64×64 tiles, split
    /// along k where they are few ([`Device::split_k_target`]). `k` is a multiple of 4.
    #[allow(clippy::too_many_arguments)]
    fn x_wt(
        &mut self,
        x: &Tensor,
        x_off4: usize,
        rows: usize,
        w: &Tensor,
        w_off4: usize,
        n: usize,
        k: usize,
        y: &Tensor,
        y_off: usize,
        ldy: usize,
        beta: f32,
    ) -> Result<(), WgpuError> {
        let tiles = rows.div_ceil(64) * n.div_ceil(64);
        let split = if rows < 8 { KSplit { splits: 1, k_per_split: k } } else { self.k_split(rows, n, k, tiles) };
        let (kernel, groups) = if rows < 8 {
            (Kernel::MatmulRows, rows * n.div_ceil(8))
        } else {
            (Kernel::MatmulTiled, tiles * split.splits)
        };
        let (gx, _) = grid(groups)?;
        let k4 = u32_of("k", k / 4)?;
        let (rows_, n_, x_off4, w_off4) =
            (u32_of("m", rows)?, u32_of("n", n)?, u32_of("offset", x_off4)?, u32_of("offset", w_off4)?);
        if split.splits == 1 {
            let values = [
                rows_,
                n_,
                k4,
                x_off4,
                u32_of("offset", y_off)?,
                u32_of("stride", ldy)?,
                gx,
                w_off4,
                k4,
                0,
                1,
                beta.to_bits(),
            ];
            return self.dispatch(kernel, &[x, w, y], &values, groups);
        }
        let part = self.split_scratch(split.splits * rows * n)?;
        let (ks4, stride) = (u32_of("k", split.k_per_split / 4)?, u32_of("stride", rows * n)?);
        let values = [rows_, n_, k4, x_off4, 0, n_, gx, w_off4, ks4, stride, split.splits as u32, 0];
        self.dispatch(kernel, &[x, w, &part], &values, groups)?;
        self.split_k_sum(&part, split.splits, rows, n, y, y_off, ldy, beta)
    }

    /// `y[t, w.rows] = x[t, w.cols] · wᵀ` (model.rs `linear`).
    pub fn linear(&mut self, x: &Tensor, t: usize, w: &Matrix, y: &Tensor) -> Result<(), WgpuError> {
        self.linear_into(x, 0, t, w, y, 0, w.rows)
    }

    /// `y[t, w.rows] += x[t, w.cols] · wᵀ`: a projection added to the residual stream in the same kernel.
    pub fn linear_add(&mut self, x: &Tensor, t: usize, w: &Matrix, y: &Tensor) -> Result<(), WgpuError> {
        self.linear_window(x, 0, t, w, y, 0, w.rows, 1.0)
    }

    /// model.rs `rms_norm` over `rows` rows of `dim`.
    pub fn rms_norm(
        &mut self,
        x: &Tensor,
        weight: &Tensor,
        eps: f32,
        dim: usize,
        rows: usize,
        out: &Tensor,
    ) -> Result<(), WgpuError> {
        need("rms_norm input", x.len, rows * dim)?;
        need("rms_norm weight", weight.len, dim)?;
        need("rms_norm output", out.len, rows * dim)?;
        let (gx, _) = grid(rows)?;
        self.dispatch(Kernel::RmsNorm, &[x, weight, out], &[rows as u32, dim as u32, eps.to_bits(), gx], rows)
    }

    /// Takes rows `row0..row0 + rows` of a fused projection `qkv [·, q_width + 2·kv_width]` (q | k | v per row)
    /// apart for the attention of positions `start..`: q rotated (model.rs `rope`) into the same rows of
    /// `q [·, q_width]`, k rotated into rows `start..` of `k_cache [positions, kv_width]`, v copied into the same
    /// rows of `v_cache`. `table` comes from
    /// [`Device::rope_table`] with at least `start + rows` positions.
    #[allow(clippy::too_many_arguments)]
    pub fn qkv_rope(
        &mut self,
        qkv: &Tensor,
        row0: usize,
        rows: usize,
        q_width: usize,
        kv_width: usize,
        head_dim: usize,
        start: usize,
        table: &Tensor,
        q: &Tensor,
        k_cache: &Tensor,
        v_cache: &Tensor,
    ) -> Result<(), WgpuError> {
        if !head_dim.is_multiple_of(2) || !q_width.is_multiple_of(head_dim) || !kv_width.is_multiple_of(head_dim) {
            return Err(WgpuError::Shape(format!("rope of widths {q_width} and {kv_width} with head_dim {head_dim}")));
        }
        need("qkv input", qkv.len, (row0 + rows) * (q_width + 2 * kv_width))?;
        need("rope table", table.len, (start + rows) * head_dim)?;
        need("q output", q.len, (row0 + rows) * q_width)?;
        need("k cache", k_cache.len, (start + rows) * kv_width)?;
        need("v cache", v_cache.len, (start + rows) * kv_width)?;
        let pairs = rows * (q_width + 2 * kv_width) / 2;
        let values =
            [u32_of("rows", rows)?, q_width as u32, head_dim as u32, u32_of("position", start)?, kv_width as u32];
        let values = [&values[..], &[u32_of("row", row0)?]].concat();
        self.dispatch(Kernel::QkvRope, &[qkv, table, q, k_cache, v_cache], &values, pairs.div_ceil(64))
    }

    /// Causal GQA attention of `t` query rows `q [t, heads·hd]` (row `i` at position `start + i`) over the cache
    /// `k_cache`/`v_cache [positions, kv_heads·hd]`, which must already hold positions `0..start + t`. With
    /// `row0 > 0` the rows are rows `row0..` of `q` and `out` (one sequence in a batch of several); that takes
    /// the per-row kernel, so `t` must be under [`FLASH_ROWS`] unless `row0` is 0.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &mut self,
        q: &Tensor,
        k_cache: &Tensor,
        v_cache: &Tensor,
        out: &Tensor,
        row0: usize,
        t: usize,
        start: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Result<(), WgpuError> {
        if head_dim > 256 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(WgpuError::Shape(format!(
                "attention with {heads} heads, {kv_heads} kv heads, head dim {head_dim}"
            )));
        }
        let kv_dim = kv_heads * head_dim;
        need("attention q", q.len, (row0 + t) * heads * head_dim)?;
        need("attention output", out.len, (row0 + t) * heads * head_dim)?;
        need("k cache", k_cache.len, (start + t) * kv_dim)?;
        need("v cache", v_cache.len, (start + t) * kv_dim)?;
        // The blocked kernel for prefills (16+ rows), its keys in parts when rows see many; decoding (one row per
        // sequence) keeps the per-row one.
        let blocked = self.blocked_attention_for(head_dim) && t >= FLASH_ROWS;
        if row0 > 0 && blocked {
            return Err(WgpuError::Shape(format!("attention of {t} rows from row {row0}: offset rows run per row")));
        }
        let (key_split, parts) = self.key_parts(blocked, start + t, t * heads * head_dim);
        let (kernel, groups) = if parts > 1 {
            (Kernel::FlashAttentionSplit, t.div_ceil(FLASH_ROWS) * heads * parts)
        } else if blocked {
            (Kernel::FlashAttention, t.div_ceil(FLASH_ROWS) * heads)
        } else {
            (Kernel::Attention, t * heads)
        };
        let (gx, _) = grid(groups)?;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let mut values = [
            u32_of("rows", t)?,
            heads as u32,
            kv_heads as u32,
            head_dim as u32,
            u32_of("position", start)?,
            kv_dim as u32,
            scale.to_bits(),
            gx,
            key_split as u32,
            parts as u32,
        ];
        if kernel == Kernel::Attention {
            // The per-row kernel reads its row offset where the blocked ones read the key split.
            values[8] = u32_of("row", row0)?;
        }
        if parts == 1 {
            return self.dispatch(kernel, &[q, k_cache, v_cache, out], &values, groups);
        }
        let o_parts = self.scratch(0, parts * t * heads * head_dim)?;
        let lse_parts = self.scratch(1, parts * t * heads)?;
        self.dispatch(kernel, &[q, k_cache, v_cache, &o_parts, &lse_parts], &values, groups)?;
        let merge = t * heads * head_dim / 4;
        values[7] = grid(merge.div_ceil(64))?.0;
        self.dispatch(Kernel::AttentionMerge, &[&o_parts, &lse_parts, out], &values, merge.div_ceil(64))
    }

    /// `out[r, i] = silu(gate_up[r, i]) · gate_up[r, ffn + i]` for `r < rows`, `i < ffn`: SwiGLU of a fused
    /// gate|up projection `[rows, 2·ffn]`.
    pub fn swiglu(&mut self, gate_up: &Tensor, rows: usize, ffn: usize, out: &Tensor) -> Result<(), WgpuError> {
        need("swiglu gate|up", gate_up.len, rows * 2 * ffn)?;
        need("swiglu output", out.len, rows * ffn)?;
        let n = rows * ffn;
        self.dispatch(Kernel::Swiglu, &[out, gate_up], &[n as u32, ffn as u32], n.div_ceil(64))
    }

    /// `x[i] += y[i]` for `i < n` (the residual connection).
    pub fn add(&mut self, x: &Tensor, y: &Tensor, n: usize) -> Result<(), WgpuError> {
        need("add x", x.len, n)?;
        need("add y", y.len, n)?;
        self.dispatch(Kernel::Add, &[x, y], &[n as u32], n.div_ceil(64))
    }

    /// `x[i, :] = table[tokens[i], :]` for `t` token ids (u32, checked against the vocabulary by the caller).
    pub fn embed(&mut self, tokens: &Tensor, t: usize, table: &Matrix, x: &Tensor) -> Result<(), WgpuError> {
        need("embed tokens", tokens.len, t)?;
        need("embed output", x.len, t * table.cols)?;
        let n = t * table.cols;
        for (row_start, chunk) in &table.chunks {
            let rows = chunk.len / table.cols;
            let values = [t as u32, table.cols as u32, *row_start as u32, rows as u32];
            self.dispatch(Kernel::Embed, &[tokens, chunk, x], &values, n.div_ceil(64))?;
        }
        Ok(())
    }

    /// Copies floats `src[src_off..src_off + len]` to `dst[dst_off..]`.
    pub fn copy(
        &mut self,
        src: &Tensor,
        src_off: usize,
        dst: &Tensor,
        dst_off: usize,
        len: usize,
    ) -> Result<(), WgpuError> {
        need("copy source", src.len, src_off + len)?;
        need("copy destination", dst.len, dst_off + len)?;
        self.ops.push(Op::Copy {
            src: src.buf.clone(),
            src_off: src_off as u64 * 4,
            dst: dst.buf.clone(),
            dst_off: dst_off as u64 * 4,
            bytes: len as u64 * 4,
        });
        Ok(())
    }

    /// Submits what is recorded so far and goes on recording into the same batch (its scratch buffers kept), so
    /// that the GPU starts on the first part of a long sequence of kernels while the host records the rest.
    pub fn flush(&mut self) -> Result<(), WgpuError> {
        let ops = std::mem::take(&mut self.ops);
        Batch { dev: self.dev, ops, scratch: Default::default(), split_products: 0 }.submit()
    }

    /// Encodes everything recorded and submits it; later downloads wait for it.
    pub fn submit(self) -> Result<(), WgpuError> {
        let inner = &self.dev.inner;
        let dev = &inner.device;
        let scope = dev.push_error_scope(::wgpu::ErrorFilter::Validation);
        let dispatches = self.ops.iter().filter(|o| matches!(o, Op::Dispatch { .. })).count().max(1);
        // All parameters in one uniform buffer, one 256-byte slot per dispatch.
        let mut bytes = vec![0u8; dispatches * PARAM_STRIDE as usize];
        let mut slot = 0;
        for op in &self.ops {
            if let Op::Dispatch { params, .. } = op {
                let at = slot * PARAM_STRIDE as usize;
                bytes[at..at + PARAM_BYTES as usize].copy_from_slice(bytemuck::cast_slice(params));
                slot += 1;
            }
        }
        let uniforms = dev.create_buffer_init(&::wgpu::util::BufferInitDescriptor {
            label: Some("params"),
            contents: &bytes,
            usage: ::wgpu::BufferUsages::UNIFORM,
        });
        let mut enc = dev.create_command_encoder(&Default::default());
        let queries = inner.profile.as_ref().map(|_| {
            let count = (2 * dispatches.min(PROFILED_DISPATCHES)) as u32;
            dev.create_query_set(&::wgpu::QuerySetDescriptor {
                label: Some("kernel timestamps"),
                ty: ::wgpu::QueryType::Timestamp,
                count,
            })
        });
        let mut timed: Vec<Kernel> = Vec::new();
        let mut slot = 0u64;
        let mut i = 0;
        while i < self.ops.len() {
            match &self.ops[i] {
                Op::Copy { src, src_off, dst, dst_off, bytes } => {
                    enc.copy_buffer_to_buffer(src, *src_off, dst, *dst_off, *bytes);
                    i += 1;
                }
                Op::Clear { buf, off, bytes } => {
                    enc.clear_buffer(buf, *off, Some(*bytes));
                    i += 1;
                }
                Op::Dispatch { .. } => {
                    // A run of dispatches shares one compute pass (wgpu orders them by their buffer usage); when
                    // profiling, each dispatch is a pass of its own between two timestamps.
                    let timestamp_writes = match &queries {
                        Some(set) if timed.len() < PROFILED_DISPATCHES => {
                            let at = 2 * timed.len() as u32;
                            if let Op::Dispatch { kernel, .. } = &self.ops[i] {
                                timed.push(*kernel);
                            }
                            Some(::wgpu::ComputePassTimestampWrites {
                                query_set: set,
                                beginning_of_pass_write_index: Some(at),
                                end_of_pass_write_index: Some(at + 1),
                            })
                        }
                        _ => None,
                    };
                    let one_per_pass = queries.is_some();
                    let mut pass =
                        enc.begin_compute_pass(&::wgpu::ComputePassDescriptor { label: None, timestamp_writes });
                    while let Some(Op::Dispatch { kernel, buffers, groups, .. }) = self.ops.get(i) {
                        let pipeline = &inner.pipelines[*kernel as usize];
                        let mut entries = vec![::wgpu::BindGroupEntry {
                            binding: 0,
                            resource: ::wgpu::BindingResource::Buffer(::wgpu::BufferBinding {
                                buffer: &uniforms,
                                offset: slot * PARAM_STRIDE,
                                size: ::wgpu::BufferSize::new(PARAM_BYTES),
                            }),
                        }];
                        for (b, buffer) in buffers.iter().enumerate() {
                            entries.push(::wgpu::BindGroupEntry {
                                binding: b as u32 + 1,
                                resource: buffer.as_entire_binding(),
                            });
                        }
                        let group = dev.create_bind_group(&::wgpu::BindGroupDescriptor {
                            label: None,
                            layout: &pipeline.get_bind_group_layout(0),
                            entries: &entries,
                        });
                        pass.set_pipeline(pipeline);
                        pass.set_bind_group(0, &group, &[]);
                        pass.dispatch_workgroups(groups.0, groups.1, 1);
                        slot += 1;
                        i += 1;
                        if one_per_pass {
                            break;
                        }
                    }
                }
            }
        }
        let readback = match (&queries, timed.is_empty()) {
            (Some(set), false) => Some(self.resolve_timestamps(&mut enc, set, timed.len())),
            _ => None,
        };
        inner.queue.submit([enc.finish()]);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(WgpuError::Validation(e.to_string()));
        }
        if let Some(buffer) = readback {
            self.add_timings(&buffer, &timed)?;
        }
        Ok(())
    }

    /// Copies the first `2 · n` timestamps into a buffer the host can map.
    fn resolve_timestamps(&self, enc: &mut ::wgpu::CommandEncoder, set: &::wgpu::QuerySet, n: usize) -> ::wgpu::Buffer {
        let dev = &self.dev.inner.device;
        let bytes = (2 * n * 8) as u64;
        let resolved = dev.create_buffer(&::wgpu::BufferDescriptor {
            label: Some("timestamps"),
            size: bytes,
            usage: ::wgpu::BufferUsages::QUERY_RESOLVE | ::wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readback = dev.create_buffer(&::wgpu::BufferDescriptor {
            label: Some("timestamps readback"),
            size: bytes,
            usage: ::wgpu::BufferUsages::MAP_READ | ::wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        enc.resolve_query_set(set, 0..(2 * n) as u32, &resolved, 0);
        enc.copy_buffer_to_buffer(&resolved, 0, &readback, 0, bytes);
        readback
    }

    /// Waits for the submission and adds each timed dispatch's GPU time to its kernel's total.
    fn add_timings(&self, readback: &::wgpu::Buffer, timed: &[Kernel]) -> Result<(), WgpuError> {
        let inner = &self.dev.inner;
        let (tx, rx) = std::sync::mpsc::channel();
        readback.slice(..).map_async(::wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        inner.device.poll(::wgpu::PollType::wait_indefinitely()).map_err(|e| WgpuError::Readback(e.to_string()))?;
        rx.recv().map_err(|e| WgpuError::Readback(e.to_string()))?.map_err(|e| WgpuError::Readback(e.to_string()))?;
        let ticks: Vec<u64> = {
            let view = readback.slice(..).get_mapped_range().map_err(|e| WgpuError::Readback(e.to_string()))?;
            bytemuck::cast_slice::<u8, u64>(&view).to_vec()
        };
        readback.unmap();
        let period_ns = f64::from(inner.queue.get_timestamp_period());
        if let Some(profile) = &inner.profile {
            let mut totals = match profile.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            for (kernel, pair) in timed.iter().zip(ticks.chunks_exact(2)) {
                let entry = &mut totals[*kernel as usize];
                entry.0 += 1;
                entry.1 += pair[1].saturating_sub(pair[0]) as f64 * period_ns;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_table_is_in_enum_order_and_names_real_shaders() {
        // Pipelines are indexed by `Kernel as usize`.
        for (i, (kernel, file, entry)) in KERNELS.iter().enumerate() {
            assert_eq!(*kernel as usize, i);
            let src = SHADERS.iter().find(|(n, _)| n == file).map(|(_, s)| s).unwrap();
            assert!(src.contains(&format!("fn {entry}(")), "{file}.wgsl has no entry point {entry}");
        }
    }

    #[test]
    fn no_two_resources_of_a_shader_share_a_binding() {
        // Naga and Vulkan accept two variables on one slot when no entry point uses both; HLSL (DX12) does not.
        for (file, src) in SHADERS {
            let mut seen = std::collections::HashSet::new();
            for (at, _) in src.match_indices("@binding(") {
                let slot: String = src[at + 9..].chars().take_while(char::is_ascii_digit).collect();
                assert!(seen.insert(slot.clone()), "{file}.wgsl binds two resources at slot {slot}");
            }
        }
    }

    #[test]
    fn grids_fold_past_65535_workgroups() {
        assert_eq!(grid(0).unwrap(), (1, 1));
        assert_eq!(grid(65_535).unwrap(), (65_535, 1));
        assert_eq!(grid(65_536).unwrap(), (65_535, 2));
        assert_eq!(grid(200_000).unwrap(), (65_535, 4));
        assert!(grid(65_535 * 65_535 + 1).is_err());
    }
}
