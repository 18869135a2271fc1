// The masked GRPO per-token loss (cpu_ops `grpo_token` / `grpo_loss`): for each masked token the clipped surrogate
// min(r·A, clip(r, 1±ε)·A) with r = exp(logp − old_logp), floored at c·A for A < 0 by the dual clip, and its
// gradient w.r.t. logp (−grad/denom; 0 where unmasked). One workgroup of 256 walks the tokens and reduces
// out = [loss = −Σ objective / denom, clipped tokens, masked tokens]. Token counts are per optimiser step (at most
// tens of thousands), so one workgroup is enough.

struct Params {
    n: u32,
    has_dual: u32,
    clip_eps: f32,
    dual: f32,
    denom: f32,
    lp_off: u32,    // logp of token i is logp[lp_off + i·lp_stride] (1 for a plain array, 8 for the LM head's state)
    lp_stride: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logp: array<f32>;
@group(0) @binding(2) var<storage, read> old_logp: array<f32>;
@group(0) @binding(3) var<storage, read> adv: array<f32>;
@group(0) @binding(4) var<storage, read> mask: array<u32>;
@group(0) @binding(5) var<storage, read_write> dlogp: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

var<workgroup> sums: array<f32, 256>;
var<workgroup> clips: array<u32, 256>;
var<workgroup> counts: array<u32, 256>;

@compute @workgroup_size(256)
fn grpo_loss(@builtin(local_invocation_index) li: u32) {
    var s = 0.0;
    var clipped = 0u;
    var tokens = 0u;
    for (var i = li; i < p.n; i += 256u) {
        if (mask[i] == 0u) {
            dlogp[i] = 0.0;
            continue;
        }
        let a = adv[i];
        let r = exp(logp[p.lp_off + i * p.lp_stride] - old_logp[i]);
        let unclipped = r * a;
        let clipped_obj = clamp(r, 1.0 - p.clip_eps, 1.0 + p.clip_eps) * a;
        var obj = unclipped;
        var grad = unclipped;
        var was = 0u;
        if (unclipped > clipped_obj) {
            obj = clipped_obj;
            grad = 0.0;
            was = 1u;
        }
        if (p.has_dual != 0u && a < 0.0 && p.dual * a > obj) {
            obj = p.dual * a;
            grad = 0.0;
            was = 1u;
        }
        dlogp[i] = -grad / p.denom;
        s += obj;
        clipped += was;
        tokens += 1u;
    }
    sums[li] = s;
    clips[li] = clipped;
    counts[li] = tokens;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride >>= 1u) {
        if (li < stride) {
            sums[li] += sums[li + stride];
            clips[li] += clips[li + stride];
            counts[li] += counts[li + stride];
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        out[0] = -sums[0] / p.denom;
        out[1] = f32(clips[0]);
        out[2] = f32(counts[0]);
    }
}
