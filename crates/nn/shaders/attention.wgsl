// Causal grouped-query attention over the KV cache (model.rs `hidden_states`): query row i (absolute position
// start + i) of head h sees cache positions 0..=start+i of KV head h / (heads / kv_heads).
// One workgroup per (row, head). Keys are taken 64 at a time: each invocation scores one key, then every invocation
// folds the block into a running max / sum / weighted value sum (online softmax) for the output dimensions it owns
// (d = lane, lane + 64, ...), so memory stays bounded at any context length. Head dims up to 256.

struct Params {
    t: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    start: u32,
    kv_dim: u32,
    scale: f32,
    groups_x: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> kc: array<f32>;
@group(0) @binding(3) var<storage, read> vc: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

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
    let q_off = i * p.heads * hd + head * hd;
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
