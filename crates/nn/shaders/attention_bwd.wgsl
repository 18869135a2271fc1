// Backward of the training attention (cpu_ops `attention_bwd`) from the saved log-sum-exp: probabilities are
// recomputed, never stored. With s_ij = scale·q_i·k_j, p_ij = exp(s_ij − lse_i), dp_ij = dout_i·v_j and
// ds_ij = p_ij·(dp_ij − D_i)·scale (D_i = dout_i·out_i, from `attention_bwd_prep`):
//   `attention_bwd_dq`: dq_i = Σ_j ds_ij k_j, one workgroup per (query row, head), keys 64 at a time;
//   `attention_bwd_dkv`: dk_j = Σ_{h in group, i} ds_ij q_i and dv_j = Σ p_ij dout_i, one workgroup per (key row,
//   kv head) over the query heads of its group and the rows j..end of its sequence.
// Each workgroup owns its outputs, so no atomics; both overwrite. Row i of the batch sees keys bounds[2i]..=i, and
// key j is seen by rows j..bounds[2j + 1]. Eight storage buffers: the WebGPU per-stage limit.

struct Params {
    t: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    _p0: u32,
    kv_dim: u32,
    scale: f32,
    groups_x: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> dout: array<f32>;
@group(0) @binding(5) var<storage, read> ld: array<f32>;
@group(0) @binding(6) var<storage, read> bounds: array<u32>;
@group(0) @binding(7) var<storage, read_write> ga: array<f32>;
@group(0) @binding(8) var<storage, read_write> gb: array<f32>;

var<workgroup> xs: array<f32, 256>;
var<workgroup> ys: array<f32, 256>;
var<workgroup> ps: array<f32, 64>;
var<workgroup> dss: array<f32, 64>;

@compute @workgroup_size(64)
fn attention_bwd_dq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
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
        xs[d] = q[q_off + d];
        ys[d] = dout[q_off + d];
    }
    workgroupBarrier();
    let lse = ld[2u * gid];
    let dsum = ld[2u * gid + 1u];
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    let end = i + 1u;
    for (var j0 = bounds[2u * i]; j0 < end; j0 += 64u) {
        let j = j0 + li;
        var ds = 0.0;
        if (j < end) {
            let kb = j * p.kv_dim + kv_off;
            var s = 0.0;
            var dp = 0.0;
            for (var d = 0u; d < hd; d++) {
                s += xs[d] * k[kb + d];
                dp += ys[d] * v[kb + d];
            }
            let pj = exp(s * p.scale - lse);
            ds = pj * (dp - dsum) * p.scale;
        }
        dss[li] = ds;
        workgroupBarrier();
        let n = min(64u, end - j0);
        for (var jj = 0u; jj < n; jj++) {
            let kb = (j0 + jj) * p.kv_dim + kv_off;
            let w = dss[jj];
            for (var r = 0u; r < 4u; r++) {
                let d = li + r * 64u;
                if (d < hd) {
                    acc[r] += w * k[kb + d];
                }
            }
        }
        workgroupBarrier();
    }
    for (var r = 0u; r < 4u; r++) {
        let d = li + r * 64u;
        if (d < hd) {
            ga[q_off + d] = acc[r];
        }
    }
}

@compute @workgroup_size(64)
fn attention_bwd_dkv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let gid = wg.x + wg.y * p.groups_x;
    if (gid >= p.t * p.kv_heads) {
        return;
    }
    let j = gid / p.kv_heads;
    let g = gid % p.kv_heads;
    let hd = p.head_dim;
    let group = p.heads / p.kv_heads;
    let kv_base = j * p.kv_dim + g * hd;
    for (var d = li; d < hd; d += 64u) {
        xs[d] = k[kv_base + d];
        ys[d] = v[kv_base + d];
    }
    workgroupBarrier();
    let end = bounds[2u * j + 1u];
    var dk = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    var dv = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var head = g * group; head < (g + 1u) * group; head++) {
        for (var i0 = j; i0 < end; i0 += 64u) {
            let i = i0 + li;
            var pi = 0.0;
            var ds = 0.0;
            if (i < end) {
                let qb = i * p.heads * hd + head * hd;
                var s = 0.0;
                var dp = 0.0;
                for (var d = 0u; d < hd; d++) {
                    s += q[qb + d] * xs[d];
                    dp += dout[qb + d] * ys[d];
                }
                let row = i * p.heads + head;
                pi = exp(s * p.scale - ld[2u * row]);
                ds = pi * (dp - ld[2u * row + 1u]) * p.scale;
            }
            ps[li] = pi;
            dss[li] = ds;
            workgroupBarrier();
            let n = min(64u, end - i0);
            for (var ii = 0u; ii < n; ii++) {
                let qb = (i0 + ii) * p.heads * hd + head * hd;
                let pw = ps[ii];
                let dw = dss[ii];
                for (var r = 0u; r < 4u; r++) {
                    let d = li + r * 64u;
                    if (d < hd) {
                        dv[r] += pw * dout[qb + d];
                        dk[r] += dw * q[qb + d];
                    }
                }
            }
            workgroupBarrier();
        }
    }
    for (var r = 0u; r < 4u; r++) {
        let d = li + r * 64u;
        if (d < hd) {
            ga[kv_base + d] = dk[r];
            gb[kv_base + d] = dv[r];
        }
    }
}
