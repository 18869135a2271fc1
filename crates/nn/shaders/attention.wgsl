// Causal grouped-query attention over the KV cache (model.rs `hidden_states`): query row i (absolute position
// start + i) of head h sees cache positions 0..=start+i of KV head h / (heads / kv_heads).
// One workgroup per (row, head). Keys are taken a tile at a time: each invocation scores one key, then every
// invocation folds the tile into a running max / sum / weighted value sum (online softmax) for the output
// dimensions it owns (d = lane, lane + 64, ...), so memory stays bounded at any context length. Head dims up to
// 256. With STAGED (the default), each tile's key rows and then its value rows are first copied into workgroup
// memory by all invocations together (consecutive floats, four loads in flight per invocation), so the scoring and
// the weighted sum read workgroup memory; without it (`USERRL_WGPU_DECODE_ATTENTION=direct`) tiles are 64 keys and
// every invocation reads its key row and the value rows from storage itself, one load at a time. Its q and out
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
// A staged tile: up to 2,048 floats of key (or value) rows, each row padded by one float so that invocations
// reading different rows at the same column hit different banks.
var<workgroup> tile: array<f32, 2112>;

override STAGED: bool = true;

// Copies rows j0..j0+n (head_dim floats from kv_off) of a cache into `tile`, row r at r·(hd + 1).
fn stage(from_keys: bool, j0: u32, n: u32, kv_off: u32, li: u32) {
    let hd = p.head_dim;
    let total = n * hd;
    for (var base = li; base < total; base += 256u) {
        var vals = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
        for (var u = 0u; u < 4u; u++) {
            let idx = base + u * 64u;
            if (idx < total) {
                let at = (j0 + idx / hd) * p.kv_dim + kv_off + idx % hd;
                if (from_keys) {
                    vals[u] = kc[at];
                } else {
                    vals[u] = vc[at];
                }
            }
        }
        for (var u = 0u; u < 4u; u++) {
            let idx = base + u * 64u;
            if (idx < total) {
                tile[(idx / hd) * (hd + 1u) + idx % hd] = vals[u];
            }
        }
    }
}

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
    // Keys per tile: 64 reading storage directly; staged, as many rows of hd + 1 floats as the tile holds.
    var per_tile = 64u;
    if (STAGED) {
        per_tile = min(64u, 2048u / hd);
    }
    let stride = hd + 1u;
    for (var j0 = 0u; j0 < visible; j0 += per_tile) {
        let n = min(per_tile, visible - j0);
        if (STAGED) {
            stage(true, j0, n, kv_off, li);
            workgroupBarrier();
        }
        var sc = -3.0e38;
        if (li < n) {
            var dotp = 0.0;
            if (STAGED) {
                let row = li * stride;
                for (var d = 0u; d < hd; d++) {
                    dotp += qs[d] * tile[row + d];
                }
            } else {
                let kb = (j0 + li) * p.kv_dim + kv_off;
                for (var d = 0u; d < hd; d++) {
                    dotp += qs[d] * kc[kb + d];
                }
            }
            sc = dotp * p.scale;
        }
        scores[li] = sc;
        workgroupBarrier();
        if (STAGED) {
            // Every invocation has read its key row: the tile takes the value rows.
            stage(false, j0, n, kv_off, li);
            workgroupBarrier();
        }
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
            for (var r = 0u; r < 4u; r++) {
                let d = li + r * 64u;
                if (d < hd) {
                    if (STAGED) {
                        acc[r] += pj * tile[jj * stride + d];
                    } else {
                        acc[r] += pj * vc[(j0 + jj) * p.kv_dim + kv_off + d];
                    }
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
