//! `y[t, out] = x[t, in] · w[out, in]ᵀ` for few rows `t` (decoding: one row per sequence, 1..=16): one pass
//! over the weight rows, output rows split over the rayon pool. The general sgemm packs the whole weight matrix
//! on every call, which at one token a step costs more than the arithmetic (SmolLM2 decoded at ~5 tokens/s
//! through it).
//!
//! The micro-kernels (AVX2 + FMA, AVX-512, AVX512-BF16, picked at run time, with a scalar fallback) hold a tile
//! of `MR` input rows × `NR` weight rows of accumulators in registers and walk `in` a vector at a time: each
//! weight vector is loaded (and, for 16-bit weights, widened) once and used for `MR` rows, each input vector once
//! for `NR` weight rows. Weights may be f32, IEEE half precision or bf16: at batch 1 decoding only streams the
//! weights, so half the bytes is nearly half the time. Several matrices that read the same input (q, k, v; gate,
//! up) go through one parallel region ([`linear_many`]), so two threads are woken once instead of three times.
//!
//! Every output is one accumulator summed over `in` in the same order whatever the tile, so a row's result does
//! not depend on how many rows share the call: a sequence decodes to the same bits alone or in a batch (the
//! engine's promise), on each instruction set.

use half::{bf16, f16};
use rayon::prelude::*;

/// Up to this many rows `model::linear` comes here (decoding batches, and prompts or prompt chunks this short).
/// Measured on 2 Zen 4 cores, quiet (`decode_bench rows`, f32 weights, SmolLM2's three shapes): the tiles beat
/// the sgemm at every row count from 16 to 192, 1.3-3× at 32-96 rows and 1.2-1.7× at 128 with either AVX2 or
/// AVX-512 tiles (the sgemm packs the whole weight matrix per call). The engine decodes up to this many
/// sequences in one forward, so each weight is streamed once for all of them.
pub const MAX_ROWS: usize = 128;

/// Output rows per rayon task: enough work per task to amortise scheduling, small enough to balance two to
/// sixteen threads on SmolLM2's 192..49,152-wide layers. A multiple of every tile width.
const ROWS_PER_TASK: usize = 48;

/// A weight matrix `[out, in]`, row-major, in f32, IEEE half precision or bfloat16. Products with bf16 weights
/// also round the inputs to bf16 (every kernel, so all give the same products up to summation order): that is
/// what lets AVX512-BF16 multiply 32 pairs per instruction, twice the f32 FMA rate.
#[derive(Clone, Copy, Debug)]
pub enum Weights<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
}

impl Weights<'_> {
    pub fn len(&self) -> usize {
        match self {
            Weights::F32(w) => w.len(),
            Weights::F16(w) => w.len(),
            Weights::Bf16(w) => w.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One matrix of a [`linear_many`] call and the `[t, out_dim]` buffer its product goes to.
pub struct Linear<'a> {
    pub w: Weights<'a>,
    pub out_dim: usize,
    pub y: &'a mut [f32],
}

/// `y = x · wᵀ` with `x` `[t, in_dim]`, `w` `[out_dim, in_dim]`, `y` `[t, out_dim]`, all row-major.
pub fn linear_few_rows(x: &[f32], t: usize, w: &[f32], in_dim: usize, out_dim: usize, y: &mut [f32]) {
    linear_many(x, t, in_dim, &mut [Linear { w: Weights::F32(w), out_dim, y }]);
}

/// Every `job.y = x · job.wᵀ`, in one parallel region. Panics if a buffer's length disagrees with the shapes
/// (a caller's bug: the kernels below read and write through raw pointers sized from them).
pub fn linear_many(x: &[f32], t: usize, in_dim: usize, jobs: &mut [Linear<'_>]) {
    assert_eq!(x.len(), t * in_dim, "x is not [t, in]");
    for job in jobs.iter() {
        assert_eq!(job.w.len(), job.out_dim * in_dim, "w is not [out, in]");
        assert_eq!(job.y.len(), t * job.out_dim, "y is not [t, out]");
    }
    if t == 0 {
        return;
    }
    if in_dim == 0 {
        jobs.iter_mut().for_each(|j| j.y.fill(0.0));
        return;
    }
    let isa = Isa::detect();
    // The inputs rounded to bf16 once for every bf16 matrix of the call.
    // (Serially: a few rows, and a parallel conversion would hand the call to the pool and back.)
    let xb: Vec<bf16> = if jobs.iter().any(|j| matches!(j.w, Weights::Bf16(_))) {
        x.iter().map(|&v| bf16::from_f32(v)).collect()
    } else {
        Vec::new()
    };
    let outs: Vec<OutPtr> = jobs.iter_mut().map(|j| OutPtr(j.y.as_mut_ptr())).collect();
    let mut tasks = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        for start in (0..job.out_dim).step_by(ROWS_PER_TASK) {
            tasks.push((i, start, (start + ROWS_PER_TASK).min(job.out_dim)));
        }
    }
    let run = |&(i, start, end): &(usize, usize, usize)| {
        let job = &jobs[i];
        let task = Task { x, xb: &xb, t, k: in_dim, y: outs[i], ldy: job.out_dim, rows: start..end };
        // SAFETY: every task writes only the columns `start..end` of its job's `y` (rows 0..t, stride out_dim),
        // and no two tasks share a (job, column range); the lengths were checked above.
        unsafe { task.run(isa, job.w) };
    };
    if tasks.len() == 1 {
        run(&tasks[0]);
    } else {
        tasks.par_iter().with_min_len(1).for_each(run);
    }
}

/// `y`'s base pointer, shared by the tasks that write disjoint columns of it.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint elements through it (see `linear_many`).
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// The instruction set the kernels use, found once per call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512F on top of AVX2 + FMA + F16C: 32 vector registers, so a tile holds 8 input rows.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    /// The widest kernels this CPU runs, capped by `USERRL_CPU_KERNELS` (`scalar`, `avx2` or `avx512`; read once)
    /// so that kernels can be compared in one binary on one machine.
    pub(crate) fn detect() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            let best = Isa::hardware();
            match std::env::var("USERRL_CPU_KERNELS").as_deref().map(str::trim) {
                Ok("scalar") => Isa::Scalar,
                #[cfg(target_arch = "x86_64")]
                Ok("avx2") if best != Isa::Scalar => Isa::Avx2,
                Ok(other) if !other.is_empty() && other != "avx512" => {
                    tracing::warn!("USERRL_CPU_KERNELS={other} is not scalar, avx2 or avx512 (or not on this CPU)");
                    best
                }
                _ => best,
            }
        })
    }

    fn hardware() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    return Isa::Avx512;
                }
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }
}

/// Weight rows `rows` of one matrix against all `t` input rows.
struct Task<'a> {
    x: &'a [f32],
    /// `x` rounded to bf16 (empty unless the matrix is bf16).
    xb: &'a [bf16],
    t: usize,
    k: usize,
    y: OutPtr,
    ldy: usize,
    rows: std::ops::Range<usize>,
}

impl Task<'_> {
    /// # Safety
    /// `y` must point at `t * ldy` floats of which this task alone writes the columns `rows`; `w` must hold
    /// at least `rows.end * k` values.
    unsafe fn run(&self, isa: Isa, w: Weights<'_>) {
        debug_assert!(w.len() >= self.rows.end * self.k);
        match (isa, w) {
            // SAFETY: AVX2, FMA and F16C were detected; the caller's contract covers the pointers.
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, Weights::F32(w)) => unsafe { avx2::task::<false>(self, w.as_ptr().cast()) },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, Weights::F16(w)) => unsafe { avx2::task::<true>(self, w.as_ptr().cast()) },
            // SAFETY: AVX-512F (and with it AVX2, FMA, F16C) was detected; as above.
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, Weights::F32(w)) => unsafe { avx512::task::<false>(self, w.as_ptr().cast()) },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, Weights::F16(w)) => unsafe { avx512::task::<true>(self, w.as_ptr().cast()) },
            // SAFETY: AVX512-BF16 was detected; the inputs were rounded for this call (see `linear_many`).
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, Weights::Bf16(w)) if bf16_dot() => unsafe { avx512bf16::task(self, w.as_ptr().cast()) },
            (_, w) => self.scalar(w),
        }
    }

    /// The portable path: each weight row (widened to f32 once) dotted with every input row.
    fn scalar(&self, w: Weights<'_>) {
        let k = self.k;
        let mut row = vec![0.0f32; k];
        let widened: Vec<f32>;
        let x = if matches!(w, Weights::Bf16(_)) {
            widened = self.xb.iter().map(|v| v.to_f32()).collect();
            &widened[..]
        } else {
            self.x
        };
        for j in self.rows.clone() {
            let wr: &[f32] = match w {
                Weights::F32(w) => &w[j * k..(j + 1) * k],
                Weights::F16(w) => {
                    for (o, v) in row.iter_mut().zip(&w[j * k..(j + 1) * k]) {
                        *o = v.to_f32();
                    }
                    &row
                }
                Weights::Bf16(w) => {
                    for (o, v) in row.iter_mut().zip(&w[j * k..(j + 1) * k]) {
                        *o = v.to_f32();
                    }
                    &row
                }
            };
            for (r, xr) in x.chunks_exact(k).enumerate() {
                // SAFETY: r < t and j < ldy (rows.end <= out_dim); this task owns column j.
                unsafe { *self.y.0.add(r * self.ldy + j) = dot(xr, wr) };
            }
        }
    }
}

/// The f32-accumulating tile of the AVX2 and AVX-512 modules (f32 or, with `HALF`, f16 weights widened by the
/// module's `load_w`), written once over the vector type and its intrinsics.
#[cfg(target_arch = "x86_64")]
macro_rules! f32_tile {
    ($features:literal, $lanes:literal, $zero:ident, $load:ident, $fma:ident, $reduce:ident) => {
        /// `y[r0 + a, j0 + b] = x[r0 + a] · w[j0 + b]` for `a < M`, `b < N`.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn tile<const M: usize, const N: usize, const HALF: bool, const PREFETCH: bool>(
            task: &Task<'_>,
            w: *const u8,
            r0: usize,
            j0: usize,
        ) {
            let k = task.k;
            let x = unsafe { task.x.as_ptr().add(r0 * k) };
            let mut acc = [[$zero(); N]; M];
            let body = k / $lanes * $lanes;
            let mut i = 0;
            while i < body {
                let mut wv = [$zero(); N];
                for (b, v) in wv.iter_mut().enumerate() {
                    *v = unsafe { load_w::<HALF>(w, (j0 + b) * k + i) };
                    if PREFETCH {
                        // Hints only (never fault), so an address past the matrix is harmless.
                        let bytes = if HALF { 2 } else { 4 };
                        let (near, far) = (j0 + b + PREFETCH_ROWS, j0 + b + 4 * PREFETCH_ROWS);
                        _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add((near * k + i) * bytes).cast());
                        _mm_prefetch::<_MM_HINT_T1>(w.wrapping_add((far * k + i) * bytes).cast());
                    }
                }
                for (a, acc) in acc.iter_mut().enumerate() {
                    let xv = unsafe { $load(x.add(a * k + i)) };
                    for (acc, wv) in acc.iter_mut().zip(&wv) {
                        *acc = $fma(xv, *wv, *acc);
                    }
                }
                i += $lanes;
            }
            for (a, acc) in acc.iter().enumerate() {
                for (b, acc) in acc.iter().enumerate() {
                    let mut s = $reduce(*acc);
                    for i in body..k {
                        s += unsafe { *x.add(a * k + i) * load_w1::<HALF>(w, (j0 + b) * k + i) };
                    }
                    // SAFETY: r0 + a < t and j0 + b < rows.end <= ldy; this task owns the column.
                    unsafe { *task.y.0.add((r0 + a) * task.ldy + j0 + b) = s };
                }
            }
        }
    };
}

/// The driver every tile family shares, expanded inside each kernel module (whose `tile`, `MR` and `NR` it calls)
/// with that module's target features, weight pointer type and extra const parameters (`HALF`: f16 or f32).
///
/// Batch 1 walks the weight rows one after another without software prefetches: batch-1 decoding only streams
/// the weights, and one sequential stream is what the hardware prefetcher follows on its own (SmolLM2 f16, 2
/// cores: 82-91 tokens/s; two interleaved rows 54, one row with software prefetches 64-74). Larger batches go
/// `NR` weight rows at a time; for each block the first tile (the `t % MR` leftover rows first) reads the weights
/// from memory and prefetches ahead (into L1 two blocks ahead, and into L2 eight blocks ahead: with the
/// arithmetic of 8 rows per weight the core keeps too few loads in flight to stream at batch 1's rate, and the
/// far hints took batch-8 decoding from 313-324 to 352-372 tokens/s in f16 and 299-311 to 411-456 in bf16 on 2
/// Zen 4 cores), the other tiles find them in L1.
#[cfg(target_arch = "x86_64")]
macro_rules! tile_driver {
    ($features:literal, $w:ty, [$($g:ident),*]) => {
        /// # Safety
        /// The module's target features must be available; `w` points at the matrix in the module's format,
        /// and the task's contract holds (for bf16, `task.xb` holds the inputs in bf16).
        #[target_feature(enable = $features)]
        pub(super) unsafe fn task<$(const $g: bool),*>(task: &Task<'_>, w: $w) {
            if task.t == 1 {
                for j in task.rows.clone() {
                    unsafe { tile::<1, 1, $($g,)* false>(task, w, 0, j) };
                }
                return;
            }
            let (mut j, end) = (task.rows.start, task.rows.end);
            while j + NR <= end {
                unsafe { row_block::<NR, $($g),*>(task, w, j) };
                j += NR;
            }
            match end - j {
                1 => unsafe { row_block::<1, $($g),*>(task, w, j) },
                2 => unsafe { row_block::<2, $($g),*>(task, w, j) },
                _ => {}
            }
        }

        /// Weight rows `j..j + N` against every input row, `MR` rows at a time.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn row_block<const N: usize, $(const $g: bool),*>(task: &Task<'_>, w: $w, j: usize) {
            let rem = task.t % MR;
            unsafe {
                match rem {
                    1 => tile::<1, N, $($g,)* true>(task, w, 0, j),
                    2 => tile::<2, N, $($g,)* true>(task, w, 0, j),
                    3 => tile::<3, N, $($g,)* true>(task, w, 0, j),
                    4 if MR > 4 => tile::<4, N, $($g,)* true>(task, w, 0, j),
                    5 if MR > 5 => tile::<5, N, $($g,)* true>(task, w, 0, j),
                    6 if MR > 6 => tile::<6, N, $($g,)* true>(task, w, 0, j),
                    7 if MR > 7 => tile::<7, N, $($g,)* true>(task, w, 0, j),
                    _ => {}
                }
            }
            let mut r = rem;
            while r + MR <= task.t {
                if r == 0 {
                    unsafe { tile::<MR, N, $($g,)* true>(task, w, r, j) };
                } else {
                    unsafe { tile::<MR, N, $($g,)* false>(task, w, r, j) };
                }
                r += MR;
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Task;

    /// Input rows per tile.
    const MR: usize = 4;
    /// Weight rows per tile: 4 × 3 accumulators + 3 weight vectors + 1 input vector fill the 16 registers.
    const NR: usize = 3;

    tile_driver!("avx2,fma,f16c", *const u8, [HALF]);

    /// How far ahead (in weight rows) the first tile of a block prefetches: the rows come from memory once per
    /// call (a model's matrices do not fit in the caches), and a three-row block is too short a stream for the
    /// hardware prefetcher to hide the latency on its own.
    const PREFETCH_ROWS: usize = 2 * NR;

    /// Eight weights from element `i` of the matrix, as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_w<const HALF: bool>(w: *const u8, i: usize) -> __m256 {
        unsafe {
            if HALF {
                _mm256_cvtph_ps(_mm_loadu_si128(w.cast::<u16>().add(i).cast()))
            } else {
                _mm256_loadu_ps(w.cast::<f32>().add(i))
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_w1<const HALF: bool>(w: *const u8, i: usize) -> f32 {
        unsafe { if HALF { half::f16::from_bits(*w.cast::<u16>().add(i)).to_f32() } else { *w.cast::<f32>().add(i) } }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
    }

    f32_tile!("avx2,fma,f16c", 8, _mm256_setzero_ps, _mm256_loadu_ps, _mm256_fmadd_ps, hsum);
}

/// The AVX-512 tiles: 8 input rows × 2 weight rows of 16-lane accumulators, so each weight vector is loaded and
/// widened once for a whole batch-8 decoding step instead of twice (8 × 3 spilled accumulators to the stack).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::Task;

    const MR: usize = 8;
    const NR: usize = 2;
    /// Weight rows ahead that the first tile of a block prefetches (see the AVX2 kernel).
    const PREFETCH_ROWS: usize = 2 * NR;

    tile_driver!("avx512f,avx2,fma,f16c", *const u8, [HALF]);

    /// Sixteen weights from element `i` of the matrix, as f32.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn load_w<const HALF: bool>(w: *const u8, i: usize) -> __m512 {
        unsafe {
            if HALF {
                _mm512_cvtph_ps(_mm256_loadu_si256(w.cast::<u16>().add(i).cast()))
            } else {
                _mm512_loadu_ps(w.cast::<f32>().add(i))
            }
        }
    }

    #[inline]
    fn load_w1<const HALF: bool>(w: *const u8, i: usize) -> f32 {
        // SAFETY: callers pass an element index inside the matrix.
        unsafe { if HALF { half::f16::from_bits(*w.cast::<u16>().add(i)).to_f32() } else { *w.cast::<f32>().add(i) } }
    }

    f32_tile!("avx512f,avx2,fma,f16c", 16, _mm512_setzero_ps, _mm512_loadu_ps, _mm512_fmadd_ps, _mm512_reduce_add_ps);
}

/// Whether this CPU multiplies bf16 pairs in hardware (AVX512-BF16: Zen 4, Sapphire Rapids and later). Serving
/// picks bf16 weights only where this holds; elsewhere they would run on the scalar path.
pub fn bf16_dot() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The AVX512-BF16 tiles: `vdpbf16ps` multiplies 32 bf16 pairs into 16 f32 sums per instruction, so a
/// batch-8 step does half the multiply instructions of the f32 kernels on the same bytes of weights. 8 input
/// rows × 2 weight rows of accumulators.
#[cfg(target_arch = "x86_64")]
mod avx512bf16 {
    use std::arch::x86_64::*;

    use half::bf16;

    use super::Task;

    const MR: usize = 8;
    const NR: usize = 2;

    tile_driver!("avx512f,avx512bf16", *const u16, []);

    /// 32 bf16 values from `p`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn load32(p: *const u16) -> __m512bh {
        // SAFETY: the caller passes 32 readable values; __m512bh and __m512i are both 64 plain bytes.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p.cast())) }
    }

    /// `y[r0 + a, j0 + b] = x[r0 + a] · w[j0 + b]` for `a < M`, `b < N`, in bf16 products summed in f32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile<const M: usize, const N: usize, const PREFETCH: bool>(
        task: &Task<'_>,
        w: *const u16,
        r0: usize,
        j0: usize,
    ) {
        let k = task.k;
        let x = unsafe { task.xb.as_ptr().cast::<u16>().add(r0 * k) };
        let mut acc = [[_mm512_setzero_ps(); N]; M];
        let body = k / 32 * 32;
        let mut i = 0;
        while i < body {
            let mut wv = [unsafe { load32(w.add(j0 * k + i)) }; N];
            for (b, v) in wv.iter_mut().enumerate().skip(1) {
                *v = unsafe { load32(w.add((j0 + b) * k + i)) };
            }
            if PREFETCH {
                for b in 0..N {
                    // Hints only (never fault), so an address past the matrix is harmless; see `tile_driver`.
                    _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add((j0 + b + 2 * N) * k + i).cast());
                    _mm_prefetch::<_MM_HINT_T1>(w.wrapping_add((j0 + b + 8 * N) * k + i).cast());
                }
            }
            for (a, acc) in acc.iter_mut().enumerate() {
                let xv = unsafe { load32(x.add(a * k + i)) };
                for (acc, wv) in acc.iter_mut().zip(&wv) {
                    *acc = _mm512_dpbf16_ps(*acc, xv, *wv);
                }
            }
            i += 32;
        }
        for (a, acc) in acc.iter().enumerate() {
            for (b, acc) in acc.iter().enumerate() {
                let mut s = _mm512_reduce_add_ps(*acc);
                for i in body..k {
                    // SAFETY: inside row r0 + a of the inputs and row j0 + b of the matrix.
                    let (xv, wv) = unsafe { (*x.add(a * k + i), *w.add((j0 + b) * k + i)) };
                    s += bf16::from_bits(xv).to_f32() * bf16::from_bits(wv).to_f32();
                }
                // SAFETY: r0 + a < t and j0 + b < rows.end <= ldy; this task owns the column.
                unsafe { *task.y.0.add((r0 + a) * task.ldy + j0 + b) = s };
            }
        }
    }
}

/// A dot product with 16 independent accumulators, so it vectorises (a plain iterator sum is sequential).
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `w` rounded to bfloat16 (round to nearest even), for [`Weights::Bf16`].
pub fn to_bf16(w: &[f32]) -> Vec<bf16> {
    use half::slice::HalfFloatSliceExt;
    let mut out = vec![bf16::ZERO; w.len()];
    out.par_chunks_mut(1 << 16).zip(w.par_chunks(1 << 16)).for_each(|(o, w)| o.convert_from_f32_slice(w));
    out
}

/// `w` rounded to half precision (round to nearest even), for [`Weights::F16`].
pub fn to_f16(w: &[f32]) -> Vec<f16> {
    use half::slice::HalfFloatSliceExt;
    let mut out = vec![f16::ZERO; w.len()];
    out.par_chunks_mut(1 << 16).zip(w.par_chunks(1 << 16)).for_each(|(o, w)| o.convert_from_f32_slice(w));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random value in [-1, 1).
    fn noise(seed: usize) -> f32 {
        let mut s = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5851_F42D_4C95_7F2D;
        s ^= s >> 29;
        s = s.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        s ^= s >> 32;
        (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// The weight formats the kernels read.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Format {
        F32,
        F16,
        Bf16,
    }

    fn check(isa: Isa, t: usize, i: usize, o: usize, format: Format) {
        let x: Vec<f32> = (0..t * i).map(|v| noise(v * 3 + 1)).collect();
        let xb = to_bf16(&x);
        let w32: Vec<f32> = (0..o * i).map(|v| noise(v * 5 + 2)).collect();
        let (w16, wb) = (to_f16(&w32), to_bf16(&w32));
        // The reference reads what the kernel reads (weights rounded to f16 or bf16 or not; inputs rounded to
        // bf16 with bf16 weights), in f64.
        let (wref, xref): (Vec<f64>, Vec<f64>) = match format {
            Format::F32 => (w32.iter().map(|&v| v as f64).collect(), x.iter().map(|&v| v as f64).collect()),
            Format::F16 => (w16.iter().map(|v| v.to_f64()).collect(), x.iter().map(|&v| v as f64).collect()),
            Format::Bf16 => (wb.iter().map(|v| v.to_f64()).collect(), xb.iter().map(|v| v.to_f64()).collect()),
        };
        let mut y = vec![f32::NAN; t * o];
        let w = match format {
            Format::F32 => Weights::F32(&w32),
            Format::F16 => Weights::F16(&w16),
            Format::Bf16 => Weights::Bf16(&wb),
        };
        for start in (0..o).step_by(ROWS_PER_TASK) {
            let task =
                Task { x: &x, xb: &xb, t, k: i, y: OutPtr(y.as_mut_ptr()), ldy: o, rows: start..(start + 7).min(o) };
            // Uneven row ranges (7 rows, then the rest) exercise every tile remainder.
            unsafe { task.run(isa, w) };
            let task = Task {
                x: &x,
                xb: &xb,
                t,
                k: i,
                y: OutPtr(y.as_mut_ptr()),
                ldy: o,
                rows: (start + 7).min(o)..(start + ROWS_PER_TASK).min(o),
            };
            unsafe { task.run(isa, w) };
        }
        for r in 0..t {
            for c in 0..o {
                let want: f64 = (0..i).map(|k| xref[r * i + k] * wref[c * i + k]).sum();
                let got = y[r * o + c] as f64;
                let scale: f64 = (0..i).map(|k| (xref[r * i + k] * wref[c * i + k]).abs()).sum();
                assert!(
                    (got - want).abs() <= 1e-5 * (1.0 + scale),
                    "{isa:?} {format:?} {t}x{i}x{o} at {r},{c}: {got} vs {want}"
                );
            }
        }
    }

    /// Every kernel this machine can run.
    fn isas() -> Vec<Isa> {
        let mut v = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        match Isa::hardware() {
            Isa::Avx512 => v.extend([Isa::Avx2, Isa::Avx512]),
            Isa::Avx2 => v.push(Isa::Avx2),
            Isa::Scalar => {}
        }
        v
    }

    #[test]
    fn kernels_match_f64_reference_on_odd_shapes() {
        for isa in isas() {
            for format in [Format::F32, Format::F16, Format::Bf16] {
                for t in (1..=40).chain([MAX_ROWS - 1, MAX_ROWS]) {
                    for (i, o) in [(5, 3), (8, 1), (37, 130), (64, 64), (72, 49), (577, 20)] {
                        check(isa, t, i, o, format);
                    }
                }
            }
        }
    }

    /// A row's outputs are the same bits whatever the other rows of the call (the engine relies on it).
    #[test]
    fn rows_do_not_depend_on_their_batch() {
        let (i, o) = (577, 50);
        let x: Vec<f32> = (0..MAX_ROWS * i).map(|v| noise(v * 13 + 3)).collect();
        let w32: Vec<f32> = (0..o * i).map(|v| noise(v * 7 + 1)).collect();
        let (w16, wb) = (to_f16(&w32), to_bf16(&w32));
        for (name, w) in [("f32", Weights::F32(&w32)), ("f16", Weights::F16(&w16)), ("bf16", Weights::Bf16(&wb))] {
            let mut all = vec![0.0f32; MAX_ROWS * o];
            linear_many(&x, MAX_ROWS, i, &mut [Linear { w, out_dim: o, y: &mut all }]);
            for t in [1, 3, 8, 9] {
                let r0 = MAX_ROWS - t;
                let mut some = vec![0.0f32; t * o];
                linear_many(&x[r0 * i..], t, i, &mut [Linear { w, out_dim: o, y: &mut some }]);
                assert_eq!(some, all[r0 * o..], "{name}: the last {t} rows alone");
            }
        }
    }

    #[test]
    fn linear_many_fills_every_job() {
        let (t, i) = (6, 45);
        let x: Vec<f32> = (0..t * i).map(|v| noise(v + 11)).collect();
        let wa: Vec<f32> = (0..100 * i).map(|v| noise(v + 7)).collect();
        let wb = to_f16(&(0..13 * i).map(|v| noise(v + 9)).collect::<Vec<_>>());
        let wc = to_bf16(&(0..9 * i).map(|v| noise(v + 5)).collect::<Vec<_>>());
        let (mut ya, mut yb, mut yc) = (vec![f32::NAN; t * 100], vec![f32::NAN; t * 13], vec![f32::NAN; t * 9]);
        linear_many(
            &x,
            t,
            i,
            &mut [
                Linear { w: Weights::F32(&wa), out_dim: 100, y: &mut ya },
                Linear { w: Weights::F16(&wb), out_dim: 13, y: &mut yb },
                Linear { w: Weights::Bf16(&wc), out_dim: 9, y: &mut yc },
            ],
        );
        let xb = to_bf16(&x);
        for r in 0..t {
            for c in 0..100 {
                let want: f32 = (0..i).map(|k| x[r * i + k] * wa[c * i + k]).sum();
                assert!((ya[r * 100 + c] - want).abs() < 1e-4, "a {r},{c}");
            }
            for c in 0..13 {
                let want: f32 = (0..i).map(|k| x[r * i + k] * wb[c * i + k].to_f32()).sum();
                assert!((yb[r * 13 + c] - want).abs() < 1e-4, "b {r},{c}");
            }
            for c in 0..9 {
                let want: f32 = (0..i).map(|k| xb[r * i + k].to_f32() * wc[c * i + k].to_f32()).sum();
                assert!((yc[r * 9 + c] - want).abs() < 1e-4, "c {r},{c}");
            }
        }
        // Degenerate shapes: nothing to do, or an empty inner dimension (all zeros).
        linear_few_rows(&[], 0, &wa, i, 100, &mut []);
        let mut y = vec![f32::NAN; 2 * 3];
        linear_few_rows(&[], 2, &[], 0, 3, &mut y);
        assert_eq!(y, vec![0.0; 6]);
    }

    #[test]
    fn f16_rounding_is_nearest() {
        let w = [1.0f32, 1.0 + 1.0 / 4096.0, 65504.0, -0.000_061_035_156, 3.0e-8];
        let h = to_f16(&w);
        assert_eq!(h[0].to_f32(), 1.0);
        assert_eq!(h[1].to_f32(), 1.0); // halfway below the next f16: rounds to even
        assert_eq!(h[2].to_f32(), 65504.0);
        assert!((h[3].to_f32() + 0.000_061_035_156).abs() < 1e-9);
        assert!(h[4].to_f32() >= 0.0 && h[4].to_f32() < 1e-7);
    }
}
