// Blocked (flash-style) backward of the training attention, the GPU twin of `attention_bwd.wgsl` (same bindings,
// same per-row (lse, D) pairs from `attention_bwd_prep`, same formulas): probabilities are recomputed from the
// saved log-sum-exp, never stored. With s_ij = scale·q_i·k_j, p_ij = exp(s_ij − lse_i), dp_ij = dout_i·v_j and
// ds_ij = p_ij·(dp_ij − D_i)·scale:
//   `flash_attention_bwd_dq`: 16 query rows of one head per workgroup, keys 64 at a time: S and dP as 16×64
//   tiles, dS in workgroup memory, dq_i += Σ_j ds_ij k_j;
//   `flash_attention_bwd_dkv`: 16 keys and one query head per workgroup, over the rows that see them 64 at a
//   time: Sᵀ and dPᵀ as 16×64 tiles, then dv_j += Σ_i p_ij dout_i and dk_j += Σ_i ds_ij q_i through one
//   workgroup buffer. It writes this head's share of dk and dv into [t, heads·hd] buffers that `group_sum`
//   (elementwise.wgsl) adds up per kv head: three times the workgroups of one per kv head (on an H100 that one
//   took 64 ms of a SmolLM2 training step; the step has few workgroups and they wait on memory).
// Each workgroup owns its outputs (no atomics) and overwrites them. 64 invocations, 4×4 outputs each; head dims up
// to 64, a multiple of 4; 16 KiB of workgroup memory.
// With `parts` > 1 (GPUs, short batches: few row blocks to spread over the SMs) each block's keys (dq) or rows
// (dk/dv) are cut into parts of `span` (a multiple of 64) from its first one, one workgroup per part writing its
// partial sums into part `part` of [parts, t, heads·hd] outputs (zeros where the part holds nothing): dq and dk/dv
// are plain sums over keys and rows, so the host adds the parts up (`splitk.wgsl`, `group_sum`).

struct Params {
    t: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    _p0: u32,
    kv_dim: u32,
    scale: f32,
    groups_x: u32,
    span: u32,  // keys (dq) or rows (dk/dv) per part
    parts: u32, // 0 or 1: not split
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> dout: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> ld: array<f32>;
@group(0) @binding(6) var<storage, read> bounds: array<u32>;
@group(0) @binding(7) var<storage, read_write> ga: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> gb: array<vec4<f32>>;

const BLOCK: u32 = 16u;
const SPAN: u32 = 64u;

// dq: Q·scale and dout of the row block, [dim 0..64][row quad 0..4]. dkv: K·scale and V of the key block,
// [dim 0..64][key quad 0..4].
var<workgroup> xa: array<vec4<f32>, 256>;
var<workgroup> xb: array<vec4<f32>, 256>;
// Streamed operands: two [dim 0..8][quad 0..16] halves while scores are formed, or [row/key 0..16][dim quad 0..16].
var<workgroup> chunk: array<vec4<f32>, 256>;
// dq: dS as [key 0..64][row quad 0..4]. dkv: P, then dS, as [row 0..64][key quad 0..4].
var<workgroup> grid_buf: array<vec4<f32>, 256>;

// Half `which` of `chunk`: dims 8 of the 64 items (keys or rows) of a span, as [dim 0..8][item quad 0..16].
fn stage_chunk(which: u32, item: u32, dq: u32, x: vec4<f32>) {
    for (var c = 0u; c < 4u; c++) {
        chunk[which * 128u + (dq * 4u + c) * 16u + item / 4u][item % 4u] = x[c];
    }
}

// Element `at` of an operand: 0 q, 1 k, 2 v, 3 dout.
fn operand(src: u32, at: u32) -> vec4<f32> {
    switch src {
        case 0u: { return q[at]; }
        case 1u: { return k[at]; }
        case 2u: { return v[at]; }
        default: { return dout[at]; }
    }
}

// The workgroup's 16 items from `first` (rows of q and dout for dq, keys of k and v for dk/dv), x·scale into `xa`
// and y into `xb`, transposed to [dim][item quad].
fn stage_items(li: u32, x_src: u32, y_src: u32, first: u32, row: u32, off: u32, hq: u32) {
    for (var e = li; e < BLOCK * 16u; e += 64u) {
        let item = e / 16u;
        let dq = e % 16u;
        var x = vec4<f32>(0.0);
        var y = vec4<f32>(0.0);
        if (first + item < p.t && dq < hq) {
            let at = (first + item) * row + off + dq;
            x = operand(x_src, at) * p.scale;
            y = operand(y_src, at);
        }
        for (var c = 0u; c < 4u; c++) {
            xa[(dq * 4u + c) * 4u + item / 4u][item % 4u] = x[c];
            xb[(dq * 4u + c) * 4u + item / 4u][item % 4u] = y[c];
        }
    }
}

// The two score tiles of the staged block against a span's 64 items from `first`: s[c] = xa · a[first + tx·4 + c]
// and dp[c] = xb · b[first + tx·4 + c] per item quad `ty` of the block, the span's rows of `a` and `b` passing
// through `chunk` 8 dims at a time.
fn score_span(li: u32, a_src: u32, b_src: u32, first: u32, end: u32, row: u32, off: u32, hq: u32) -> array<array<vec4<f32>, 4>, 2> {
    let ty = li / 16u;
    let tx = li % 16u;
    var s = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    var dp = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var d0 = 0u; d0 < hq; d0 += 2u) {
        workgroupBarrier();
        for (var e = li; e < 256u; e += 64u) {
            let which = e / 128u;
            let item = (e % 128u) / 2u;
            let dq = e % 2u;
            var x = vec4<f32>(0.0);
            if (first + item < end && d0 + dq < hq) {
                x = operand(select(b_src, a_src, which == 0u), (first + item) * row + off + d0 + dq);
            }
            stage_chunk(which, item, dq, x);
        }
        workgroupBarrier();
        for (var dd = 0u; dd < 8u; dd++) {
            let xv = xa[(d0 * 4u + dd) * 4u + ty];
            let yv = xb[(d0 * 4u + dd) * 4u + ty];
            let av = chunk[dd * 16u + tx];
            let bv = chunk[128u + dd * 16u + tx];
            for (var c = 0u; c < 4u; c++) {
                s[c] += xv * av[c];
                dp[c] += yv * bv[c];
            }
        }
    }
    return array<array<vec4<f32>, 4>, 2>(s, dp);
}

// `acc[r] += Σ_i grid_buf[i][quad ty][r] · src[first + i]` over a span's 64 items (rows or keys), for the item
// quad `ty` and the dims of quad `tx` this invocation owns; the span's rows of `src` (0: q, 1: k, 3: dout) pass
// through `chunk` 16 at a time. dq accumulates dS·K this way, dk and dv Pᵀ·dout and dSᵀ·q.
fn accumulate_span(li: u32, src: u32, first: u32, end: u32, row: u32, off: u32, hq: u32, acc_in: array<vec4<f32>, 4>) -> array<vec4<f32>, 4> {
    var acc = acc_in;
    let ty = li / 16u;
    let tx = li % 16u;
    for (var ic = 0u; ic < SPAN; ic += 16u) {
        workgroupBarrier();
        for (var e = li; e < 256u; e += 64u) {
            let item = e / 16u;
            let dq = e % 16u;
            var x = vec4<f32>(0.0);
            if (first + ic + item < end && dq < hq) {
                x = operand(src, (first + ic + item) * row + off + dq);
            }
            chunk[e] = x;
        }
        workgroupBarrier();
        for (var ii = 0u; ii < 16u; ii++) {
            let w = grid_buf[(ic + ii) * 4u + ty];
            let x = chunk[ii * 16u + tx];
            for (var r = 0u; r < 4u; r++) {
                acc[r] += w[r] * x;
            }
        }
    }
    return acc;
}

@compute @workgroup_size(64)
fn flash_attention_bwd_dq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let gid = wg.x + wg.y * p.groups_x;
    let blocks = (p.t + BLOCK - 1u) / BLOCK;
    let per_part = blocks * p.heads;
    if (gid >= per_part * max(p.parts, 1u)) {
        return;
    }
    let part = gid / per_part;
    let i0 = (blocks - 1u - (gid % per_part) / p.heads) * BLOCK;
    let head = gid % p.heads;
    let ty = li / 16u;
    let tx = li % 16u;
    let hq = p.head_dim / 4u;
    let q_row = p.heads * hq;
    let kv_row = p.kv_dim / 4u;
    let kv_off = (head / (p.heads / p.kv_heads)) * hq;
    stage_items(li, 0u, 3u, i0, q_row, head * hq, hq);
    // This invocation's rows: visible keys first..=last, log-sum-exp and D.
    var first = vec4<u32>(1u);
    var last = vec4<u32>(0u);
    var lse = vec4<f32>(0.0);
    var dsum = vec4<f32>(0.0);
    for (var r = 0u; r < 4u; r++) {
        let i = i0 + ty * 4u + r;
        if (i < p.t) {
            first[r] = bounds[2u * i];
            last[r] = i;
            lse[r] = ld[2u * (i * p.heads + head)];
            dsum[r] = ld[2u * (i * p.heads + head) + 1u];
        }
    }
    var j_begin = bounds[2u * i0];
    var j_end = min(i0 + BLOCK, p.t);
    if (p.parts > 1u) {
        j_begin += part * p.span;
        j_end = min(j_begin + p.span, j_end);
    }
    var acc = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var j0 = j_begin; j0 < j_end; j0 += SPAN) {
        // S and dP of the block's rows against keys j0 + tx·4 + c.
        let sd = score_span(li, 1u, 2u, j0, j_end, kv_row, kv_off, hq);
        for (var c = 0u; c < 4u; c++) {
            let j = vec4<u32>(j0 + tx * 4u + c);
            let pc = select(vec4<f32>(0.0), exp(sd[0][c] - lse), (j >= first) & (j <= last));
            grid_buf[(tx * 4u + c) * 4u + ty] = pc * (sd[1][c] - dsum) * p.scale;
        }
        acc = accumulate_span(li, 1u, j0, j_end, kv_row, kv_off, hq, acc);
    }
    for (var r = 0u; r < 4u; r++) {
        let i = i0 + ty * 4u + r;
        if (i < p.t && tx < hq) {
            ga[(part * p.t + i) * q_row + head * hq + tx] = acc[r];
        }
    }
}

@compute @workgroup_size(64)
fn flash_attention_bwd_dkv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let gid = wg.x + wg.y * p.groups_x;
    let blocks = (p.t + BLOCK - 1u) / BLOCK;
    let per_part = blocks * p.heads;
    if (gid >= per_part * max(p.parts, 1u)) {
        return;
    }
    let part = gid / per_part;
    // The first key blocks are seen by the most rows: they go first.
    let j0 = ((gid % per_part) / p.heads) * BLOCK;
    let head = gid % p.heads;
    let g = head / (p.heads / p.kv_heads);
    let ty = li / 16u;
    let tx = li % 16u;
    let hq = p.head_dim / 4u;
    let q_row = p.heads * hq;
    let kv_row = p.kv_dim / 4u;
    stage_items(li, 1u, 2u, j0, kv_row, g * hq, hq);
    // This invocation's keys j are seen by rows j..end_j.
    var key = vec4<u32>(0u);
    var end = vec4<u32>(0u);
    for (var r = 0u; r < 4u; r++) {
        let j = j0 + ty * 4u + r;
        key[r] = j;
        if (j < p.t) {
            end[r] = bounds[2u * j + 1u];
        }
    }
    var i_begin = j0;
    var i_end = bounds[2u * (min(j0 + BLOCK, p.t) - 1u) + 1u];
    if (p.parts > 1u) {
        i_begin += part * p.span;
        i_end = min(i_begin + p.span, i_end);
    }
    var dk = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    var dv = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var i0 = i_begin; i0 < i_end; i0 += SPAN) {
        // Sᵀ and dPᵀ: row i0 + tx·4 + c against this invocation's four keys.
        let sd = score_span(li, 0u, 3u, i0, i_end, q_row, head * hq, hq);
        var dst = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
        for (var c = 0u; c < 4u; c++) {
            let i = i0 + tx * 4u + c;
            var pc = vec4<f32>(0.0);
            if (i < i_end) {
                let row = i * p.heads + head;
                let iv = vec4<u32>(i);
                pc = select(vec4<f32>(0.0), exp(sd[0][c] - ld[2u * row]), (iv >= key) & (iv < end));
                dst[c] = pc * (sd[1][c] - ld[2u * row + 1u]) * p.scale;
            }
            grid_buf[(tx * 4u + c) * 4u + ty] = pc;
        }
        dv = accumulate_span(li, 3u, i0, i_end, q_row, head * hq, hq, dv);
        workgroupBarrier();
        for (var c = 0u; c < 4u; c++) {
            grid_buf[(tx * 4u + c) * 4u + ty] = dst[c];
        }
        dk = accumulate_span(li, 0u, i0, i_end, q_row, head * hq, hq, dk);
    }
    // This head's share, [t, heads·hd].
    for (var r = 0u; r < 4u; r++) {
        let j = j0 + ty * 4u + r;
        if (j < p.t && tx < hq) {
            ga[(part * p.t + j) * q_row + head * hq + tx] = dk[r];
            gb[(part * p.t + j) * q_row + head * hq + tx] = dv[r];
        }
    }
}
