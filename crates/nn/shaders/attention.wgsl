// Causal grouped-query attention over the KV cache (model.rs `hidden_states`): query row i (absolute position
// start + i) of head h sees cache positions 0..=start+i of KV head h / (heads / kv_heads).
// One workgroup per (row, head). Keys are taken 64 at a time: each invocation scores one key, then every invocation
// folds the block into a running max / sum / weighted value sum (online softmax) for the output dimensions it owns
// (d = lane, lane + 64, ...), so memory stays bounded at any context length. Head dims up to 256. Its q and out
// rows are rows row0.. of their buffers (one sequence's rows in a batch whose sequences have caches of their own).
// `attention_train` is the training forward (cpu_ops `attention_fwd`): sequences laid end to end, row i sees the
// keys bounds[2i]..=i of its own sequence (k/v are the batch's own rows, no cache), and it saves each row's
// log-sum-exp of the scaled scores for the backward. `attention_bwd_prep` pairs that log-sum-exp with
// D = rowsum(dout ⊙ out) per (row, head), the two per-row values the backward kernels read.

struct Params {
    t: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    start: u32,
    kv_dim: u32,
    scale: f32,
    groups_x: u32,
    row0: u32, // `attention` only
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> kc: array<f32>;
@group(0) @binding(3) var<storage, read> vc: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;
@group(0) @binding(6) var<storage, read> bounds: array<u32>;

var<workgroup> qs: array<f32, 256>;
var<workgroup> scores: array<f32, 64>;

@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let gid = wg.x + wg.y * p.groups_x;
    if (gid >= p.t * p.heads) {
        return;
    }
    let i = gid / p.heads;
    let head = gid % p.heads;
    let hd = p.head_dim;
    let kv_off = (head / (p.heads / p.kv_heads)) * hd;
    let q_off = (p.row0 + i) * p.heads * hd + head * hd;
    for (var d = li; d < hd; d += 64u) {
        qs[d] = q[q_off + d];
    }
    workgroupBarrier();
    let visible = p.start + i + 1u;
    var m = -3.0e38;
    var l = 0.0;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var j0 = 0u; j0 < visible; j0 += 64u) {
        let j = j0 + li;
        var sc = -3.0e38;
        if (j < visible) {
            let kb = j * p.kv_dim + kv_off;
            var dotp = 0.0;
            for (var d = 0u; d < hd; d++) {
                dotp += qs[d] * kc[kb + d];
            }
            sc = dotp * p.scale;
        }
        scores[li] = sc;
        workgroupBarrier();
        let n = min(64u, visible - j0);
        var bm = m;
        for (var jj = 0u; jj < n; jj++) {
            bm = max(bm, scores[jj]);
        }
        let corr = exp(m - bm);
        l *= corr;
        for (var r = 0u; r < 4u; r++) {
            acc[r] *= corr;
        }
        for (var jj = 0u; jj < n; jj++) {
            let pj = exp(scores[jj] - bm);
            l += pj;
            let vb = (j0 + jj) * p.kv_dim + kv_off;
            for (var r = 0u; r < 4u; r++) {
                let d = li + r * 64u;
                if (d < hd) {
                    acc[r] += pj * vc[vb + d];
                }
            }
        }
        m = bm;
        workgroupBarrier();
    }
    for (var r = 0u; r < 4u; r++) {
        let d = li + r * 64u;
        if (d < hd) {
            out[q_off + d] = acc[r] / l;
        }
    }
}

@compute @workgroup_size(64)
fn attention_train(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let gid = wg.x + wg.y * p.groups_x;
    if (gid >= p.t * p.heads) {
        return;
    }
    let i = gid / p.heads;
    let head = gid % p.heads;
    let hd = p.head_dim;
    let kv_off = (head / (p.heads / p.kv_heads)) * hd;
    let q_off = i * p.heads * hd + head * hd;
    for (var d = li; d < hd; d += 64u) {
        qs[d] = q[q_off + d];
    }
    workgroupBarrier();
    let first = bounds[2u * i];
    let end = i + 1u;
    var m = -3.0e38;
    var l = 0.0;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var j0 = first; j0 < end; j0 += 64u) {
        let j = j0 + li;
        var sc = -3.0e38;
        if (j < end) {
            let kb = j * p.kv_dim + kv_off;
            var dotp = 0.0;
            for (var d = 0u; d < hd; d++) {
                dotp += qs[d] * kc[kb + d];
            }
            sc = dotp * p.scale;
        }
        scores[li] = sc;
        workgroupBarrier();
        let n = min(64u, end - j0);
        var bm = m;
        for (var jj = 0u; jj < n; jj++) {
            bm = max(bm, scores[jj]);
        }
        let corr = exp(m - bm);
        l *= corr;
        for (var r = 0u; r < 4u; r++) {
            acc[r] *= corr;
        }
        for (var jj = 0u; jj < n; jj++) {
            let pj = exp(scores[jj] - bm);
            l += pj;
            let vb = (j0 + jj) * p.kv_dim + kv_off;
            for (var r = 0u; r < 4u; r++) {
                let d = li + r * 64u;
                if (d < hd) {
                    acc[r] += pj * vc[vb + d];
                }
            }
        }
        m = bm;
        workgroupBarrier();
    }
    for (var r = 0u; r < 4u; r++) {
        let d = li + r * 64u;
        if (d < hd) {
            out[q_off + d] = acc[r] / l;
        }
    }
    if (li == 0u) {
        lse[i * p.heads + head] = m + log(l);
    }
}

// Bindings here: q = the forward's output, kc = dout, vc = lse, out = the (lse, D) pairs. One invocation per
// (row, head).
@compute @workgroup_size(64)
fn attention_bwd_prep(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = g.x + g.y * nwg.x * 64u;
    if (idx >= p.t * p.heads) {
        return;
    }
    let base = idx * p.head_dim;
    var dsum = 0.0;
    for (var d = 0u; d < p.head_dim; d++) {
        dsum += q[base + d] * kc[base + d];
    }
    out[2u * idx] = vc[idx];
    out[2u * idx + 1u] = dsum;
}
