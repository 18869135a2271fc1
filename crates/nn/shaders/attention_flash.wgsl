// Blocked (flash-style) causal GQA attention forward, the GPU twin of `attention.wgsl` for many query rows
// (prefill, training). A workgroup of 64 invocations owns 16 query rows of one head and walks the visible keys 64
// at a time: S = Q·Kᵀ as a 16×64 tile (4 rows × 4 keys per invocation), an online softmax over the tile, then
// O += P·V (4 rows × 4 head dims per invocation). Q, K and V go through workgroup memory once per workgroup and
// block instead of once per (row, head) as in `attention.wgsl`, and every global read is a coalesced vec4.
// Head dims up to 64, a multiple of 4 (the caller falls back to `attention.wgsl` otherwise); the WebGPU default
// 16 KiB of workgroup memory.
// `flash_attention` is the KV-cache forward (row i at position start + i sees cache positions 0..=start+i);
// `flash_attention_train` the training forward (row i sees keys bounds[2i]..=i of its own sequence, and it saves
// each row's log-sum-exp for the backward), with the semantics of `attention` / `attention_train`.
// `flash_attention_split` (KV cache) and `flash_attention_train_split` (training, short batches) cut the keys of
// each row block into parts of `key_split` (a multiple of 64): one workgroup per (row block, head, part) writes its
// part's normalised output and log-sum-exp, and `attention_merge.wgsl` weighs the parts together. A long prompt's
// last row blocks then no longer walk all keys alone while the GPU's other SMs sit idle (at 512 tokens: 720
// workgroups of at most 2 key blocks instead of 288 of up to 8).

struct Params {
    t: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    start: u32,
    kv_dim: u32,
    scale: f32,
    groups_x: u32,
    key_split: u32, // the `_split` kernels: keys per part
    parts: u32,     // the `_split` kernels: parts of the longest row block
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> kc: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> vc: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;
@group(0) @binding(6) var<storage, read> bounds: array<u32>;

const ROWS: u32 = 16u;
const KEYS: u32 = 64u;
const MASKED: f32 = -3.0e38;

var<workgroup> qs: array<vec4<f32>, 256>; // Q·scale of the block: [dim 0..64][row quad 0..4]
var<workgroup> kv: array<vec4<f32>, 256>; // K chunk [dim 0..16][key quad 0..16], or V chunk [key 0..16][dim quad 0..16]
var<workgroup> pt: array<vec4<f32>, 256>; // P of the key block: [key 0..64][row quad 0..4]
var<workgroup> red: array<vec4<f32>, 64>; // per invocation, its rows' partial max or sum: [tx 0..16][row quad]

// Which workgroup row block and head: the last row blocks (most keys under the causal mask) go first.
fn block_of(gid: u32) -> vec2<u32> {
    let blocks = (p.t + ROWS - 1u) / ROWS;
    return vec2<u32>((blocks - 1u - gid / p.heads) * ROWS, gid % p.heads);
}

// Rows i0..i0+16 of `head` over keys j_begin..j_end; row ty·4 + r of this invocation sees keys first[r]..=last[r].
// Writes the normalised output (zeros for a row that sees none of these keys) at out_off4 + row · heads·hd / 4 and
// returns the rows' running max and softmax denominator (0 for such a row).
fn flash_rows(li: u32, i0: u32, head: u32, j_begin: u32, j_end: u32, first: vec4<u32>, last: vec4<u32>, out_off4: u32) -> array<vec4<f32>, 2> {
    let ty = li / 16u;
    let tx = li % 16u;
    let hq = p.head_dim / 4u;
    let q_row = p.heads * hq;
    let kv_row = p.kv_dim / 4u;
    let kv_off = (head / (p.heads / p.kv_heads)) * hq;
    for (var e = li; e < ROWS * 16u; e += 64u) {
        let row = e / 16u;
        let dq = e % 16u;
        var x = vec4<f32>(0.0);
        if (i0 + row < p.t && dq < hq) {
            x = q[(i0 + row) * q_row + head * hq + dq] * p.scale;
        }
        for (var c = 0u; c < 4u; c++) {
            qs[(dq * 4u + c) * 4u + row / 4u][row % 4u] = x[c];
        }
    }
    var m = vec4<f32>(MASKED);
    var l = vec4<f32>(0.0);
    var o = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var j0 = j_begin; j0 < j_end; j0 += KEYS) {
        // s[c]: the scores of key j0 + tx·4 + c against this invocation's four rows.
        var s = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
        for (var d0 = 0u; d0 < hq; d0 += 4u) {
            workgroupBarrier();
            for (var e = li; e < KEYS * 4u; e += 64u) {
                let key = e / 4u;
                let dq = e % 4u;
                var x = vec4<f32>(0.0);
                if (j0 + key < j_end && d0 + dq < hq) {
                    x = kc[(j0 + key) * kv_row + kv_off + d0 + dq];
                }
                for (var c = 0u; c < 4u; c++) {
                    kv[(dq * 4u + c) * 16u + key / 4u][key % 4u] = x[c];
                }
            }
            workgroupBarrier();
            for (var dd = 0u; dd < 16u; dd++) {
                let qv = qs[(d0 * 4u + dd) * 4u + ty];
                let kk = kv[dd * 16u + tx];
                s[0] += qv * kk.x;
                s[1] += qv * kk.y;
                s[2] += qv * kk.z;
                s[3] += qv * kk.w;
            }
        }
        var part = vec4<f32>(MASKED);
        for (var c = 0u; c < 4u; c++) {
            let j = vec4<u32>(j0 + tx * 4u + c);
            s[c] = select(vec4<f32>(MASKED), s[c], (j >= first) & (j <= last));
            part = max(part, s[c]);
        }
        red[tx * 4u + ty] = part;
        workgroupBarrier();
        var mx = m;
        for (var u = 0u; u < 16u; u++) {
            mx = max(mx, red[u * 4u + ty]);
        }
        let corr = exp(m - mx);
        m = mx;
        var sum = vec4<f32>(0.0);
        for (var c = 0u; c < 4u; c++) {
            let pc = select(vec4<f32>(0.0), exp(s[c] - mx), s[c] > vec4<f32>(-1.0e38));
            sum += pc;
            pt[(tx * 4u + c) * 4u + ty] = pc;
        }
        // Each invocation keeps the sum over its own keys; the 16 partial sums of a row meet once at the end.
        l = l * corr + sum;
        for (var r = 0u; r < 4u; r++) {
            o[r] *= corr[r];
        }
        for (var jc = 0u; jc < KEYS; jc += 16u) {
            workgroupBarrier();
            for (var e = li; e < 256u; e += 64u) {
                let key = e / 16u;
                let dq = e % 16u;
                var x = vec4<f32>(0.0);
                if (j0 + jc + key < j_end && dq < hq) {
                    x = vc[(j0 + jc + key) * kv_row + kv_off + dq];
                }
                kv[e] = x;
            }
            workgroupBarrier();
            for (var jj = 0u; jj < 16u; jj++) {
                let pv = pt[(jc + jj) * 4u + ty];
                let vv = kv[jj * 16u + tx];
                o[0] += pv.x * vv;
                o[1] += pv.y * vv;
                o[2] += pv.z * vv;
                o[3] += pv.w * vv;
            }
        }
    }
    red[tx * 4u + ty] = l;
    workgroupBarrier();
    var total = vec4<f32>(0.0);
    for (var u = 0u; u < 16u; u++) {
        total += red[u * 4u + ty];
    }
    for (var r = 0u; r < 4u; r++) {
        let i = i0 + ty * 4u + r;
        if (i < p.t && tx < hq) {
            out[out_off4 + i * q_row + head * hq + tx] = select(vec4<f32>(0.0), o[r] / total[r], total[r] > 0.0);
        }
    }
    return array<vec4<f32>, 2>(m, total);
}

// The key ranges of this invocation's four rows of the block at i0: (first, last) visible key. KV cache: row i at
// position start + i sees 0..=start+i. Training: row i sees bounds[2i]..=i. Rows past t see nothing.
fn cache_rows(li: u32, i0: u32) -> array<vec4<u32>, 2> {
    var first = vec4<u32>(0u);
    var last = vec4<u32>(0u);
    for (var r = 0u; r < 4u; r++) {
        let i = i0 + (li / 16u) * 4u + r;
        if (i < p.t) {
            last[r] = p.start + i;
        } else {
            first[r] = 1u;
        }
    }
    return array<vec4<u32>, 2>(first, last);
}

fn train_rows(li: u32, i0: u32) -> array<vec4<u32>, 2> {
    var first = vec4<u32>(1u);
    var last = vec4<u32>(0u);
    for (var r = 0u; r < 4u; r++) {
        let i = i0 + (li / 16u) * 4u + r;
        if (i < p.t) {
            first[r] = bounds[2u * i];
            last[r] = i;
        }
    }
    return array<vec4<u32>, 2>(first, last);
}

// The log-sum-exps of the block's rows from `flash_rows`' (max, sum), at lse[(part·t + i)·heads + head]; −3e38 for
// a row that saw no key (of this part).
fn write_lse(li: u32, i0: u32, head: u32, part: u32, stats: array<vec4<f32>, 2>) {
    if (li % 16u == 0u) {
        for (var r = 0u; r < 4u; r++) {
            let i = i0 + (li / 16u) * 4u + r;
            if (i < p.t) {
                let seen = stats[1][r] > 0.0;
                lse[(part * p.t + i) * p.heads + head] = select(MASKED, stats[0][r] + log(stats[1][r]), seen);
            }
        }
    }
}

@compute @workgroup_size(64)
fn flash_attention(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let gid = wg.x + wg.y * p.groups_x;
    if (gid >= (p.t + ROWS - 1u) / ROWS * p.heads) {
        return;
    }
    let at = block_of(gid);
    let rows = cache_rows(li, at.x);
    flash_rows(li, at.x, at.y, 0u, p.start + min(at.x + ROWS, p.t), rows[0], rows[1], 0u);
}

// Parts of the keys row block i0 sees (positions 0..start + min(i0 + 16, t)); `attention_merge.wgsl` counts them
// the same way.
fn parts_of(i0: u32) -> u32 {
    return (p.start + min(i0 + ROWS, p.t) + p.key_split - 1u) / p.key_split;
}

@compute @workgroup_size(64)
fn flash_attention_split(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let gid = wg.x + wg.y * p.groups_x;
    let per_part = (p.t + ROWS - 1u) / ROWS * p.heads;
    let part = gid / per_part;
    let at = block_of(gid % per_part);
    if (part >= parts_of(at.x)) {
        return; // past this row block's keys (the grid is sized for the longest block)
    }
    let rows = cache_rows(li, at.x);
    let j_begin = part * p.key_split;
    let j_end = min(j_begin + p.key_split, p.start + min(at.x + ROWS, p.t));
    let row4 = p.heads * p.head_dim / 4u;
    let stats = flash_rows(li, at.x, at.y, j_begin, j_end, rows[0], rows[1], part * p.t * row4);
    write_lse(li, at.x, at.y, part, stats);
}

@compute @workgroup_size(64)
fn flash_attention_train(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let gid = wg.x + wg.y * p.groups_x;
    if (gid >= (p.t + ROWS - 1u) / ROWS * p.heads) {
        return;
    }
    let at = block_of(gid);
    let rows = train_rows(li, at.x);
    let stats = flash_rows(li, at.x, at.y, bounds[2u * at.x], min(at.x + ROWS, p.t), rows[0], rows[1], 0u);
    write_lse(li, at.x, at.y, 0u, stats);
}

// `flash_attention_train` with each row block's keys (from its first row's sequence start) in parts of
// `key_split`, one workgroup per (row block, head, part) writing the part's normalised output and log-sum-exp; a
// part past the block's keys writes −3e38 log-sum-exps, so `attention_merge_train` can weigh all `parts`.
@compute @workgroup_size(64)
fn flash_attention_train_split(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let gid = wg.x + wg.y * p.groups_x;
    let per_part = (p.t + ROWS - 1u) / ROWS * p.heads;
    if (gid >= per_part * p.parts) {
        return;
    }
    let part = gid / per_part;
    let at = block_of(gid % per_part);
    let rows = train_rows(li, at.x);
    let j_begin = bounds[2u * at.x] + part * p.key_split;
    let j_end = min(j_begin + p.key_split, min(at.x + ROWS, p.t));
    var stats = array<vec4<f32>, 2>(vec4<f32>(MASKED), vec4<f32>(0.0));
    if (j_begin < j_end) {
        let row4 = p.heads * p.head_dim / 4u;
        stats = flash_rows(li, at.x, at.y, j_begin, j_end, rows[0], rows[1], part * p.t * row4);
    }
    write_lse(li, at.x, at.y, part, stats);
}
