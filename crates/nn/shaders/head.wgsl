// The LM head's softmax statistics in vocab chunks (cpu_ops `lm_head_fwd` / `lm_head_bwd`): the host computes one
// chunk of logits [n, cw] at a time (classes c0..c0 + cw) with the matmul kernel, so no [n, vocab] buffer exists.
// `state` keeps 8 floats per row: running max m, S = Σ e^(l−m), U = Σ e^(l−m)·(l−m), the target's logit, and
// after the last chunk the target log-prob, the entropy ln S − U/S and the log-sum-exp m + ln S.
// `head_update`: one workgroup per row folds a chunk into its row's state (online log-sum-exp).
// `head_grad`: one invocation per logit turns the recomputed chunk into ∂L/∂logits in place, from upstream
// gradients on the target log-prob (dlogp) and, with `has_dentropy`, on the entropy.

struct Params {
    n: u32,
    cw: u32,
    c0: u32,
    last: u32,
    has_dentropy: u32,
    groups_x: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<u32>;
@group(0) @binding(3) var<storage, read_write> state: array<f32>;
@group(0) @binding(4) var<storage, read> dlogp: array<f32>;
@group(0) @binding(5) var<storage, read> dentropy: array<f32>;

var<workgroup> ra: array<f32, 64>;
var<workgroup> rb: array<f32, 64>;

@compute @workgroup_size(64)
fn head_update(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = wg.x + wg.y * p.groups_x;
    if (i >= p.n) {
        return;
    }
    let row = i * p.cw;
    var mx = -3.0e38;
    for (var j = li; j < p.cw; j += 64u) {
        mx = max(mx, logits[row + j]);
    }
    ra[li] = mx;
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride >>= 1u) {
        if (li < stride) {
            ra[li] = max(ra[li], ra[li + stride]);
        }
        workgroupBarrier();
    }
    let cmax = ra[0];
    workgroupBarrier();
    var s = 0.0;
    var u = 0.0;
    for (var j = li; j < p.cw; j += 64u) {
        let d = logits[row + j] - cmax;
        let e = exp(d);
        s += e;
        u += e * d;
    }
    ra[li] = s;
    rb[li] = u;
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride >>= 1u) {
        if (li < stride) {
            ra[li] += ra[li + stride];
            rb[li] += rb[li + stride];
        }
        workgroupBarrier();
    }
    if (li != 0u) {
        return;
    }
    let st = i * 8u;
    let cs = ra[0];
    let cu = rb[0];
    let tgt = targets[i];
    var tl = state[st + 3u];
    if (tgt >= p.c0 && tgt < p.c0 + p.cw) {
        tl = logits[row + tgt - p.c0];
    }
    var m = cmax;
    var big_s = cs;
    var big_u = cu;
    if (p.c0 != 0u) {
        let mo = state[st];
        m = max(mo, cmax);
        let a = exp(mo - m);
        let b = exp(cmax - m);
        let so = state[st + 1u];
        big_s = so * a + cs * b;
        big_u = a * (state[st + 2u] + (mo - m) * so) + b * (cu + (cmax - m) * cs);
    }
    state[st] = m;
    state[st + 1u] = big_s;
    state[st + 2u] = big_u;
    state[st + 3u] = tl;
    if (p.last != 0u) {
        let lse = m + log(big_s);
        state[st + 4u] = tl - lse;
        state[st + 5u] = log(big_s) - big_u / big_s;
        state[st + 6u] = lse;
    }
}

@compute @workgroup_size(64)
fn head_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    if (idx >= p.n * p.cw) {
        return;
    }
    let i = idx / p.cw;
    let j = idx % p.cw;
    let lse = state[i * 8u + 6u];
    let h = state[i * 8u + 5u];
    let gl = dlogp[i];
    var ge = 0.0;
    if (p.has_dentropy != 0u) {
        ge = dentropy[i];
    }
    let logp = logits[idx] - lse;
    let pr = exp(logp);
    // ∂logp_target/∂l_j = δ − p_j;  ∂H/∂l_j = −p_j (log p_j + H)
    var g = -gl * pr - ge * pr * (logp + h);
    if (p.c0 + j == targets[i]) {
        g += gl;
    }
    logits[idx] = g;
}
