// The second half of the key-split attention (`flash_attention_split` and `flash_attention_train_split` in
// attention_flash.wgsl): out[i, head] = Σ_s w_s · o_s / Σ_s w_s with w_s = exp(lse_s − max_s lse_s) over the
// parts. A part that none of row i's keys fall in has lse = −3e38 and weighs nothing. One vec4 of the output per
// invocation. `attention_merge` (KV cache) counts the parts of row i's block of 16 rows as the split kernel does
// (it writes nothing past them); `attention_merge_train` weighs all `parts` and also writes the merged
// log-sum-exp, max + log Σ_s w_s, which the training backward needs.

struct Params {
    t: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    start: u32,
    kv_dim: u32,
    scale: f32,
    groups_x: u32,
    key_split: u32,
    parts: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> o_parts: array<vec4<f32>>; // [parts, t, heads·hd]
@group(0) @binding(2) var<storage, read> lse_parts: array<f32>;     // [parts, t, heads]
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> lse_out: array<f32>; // [t, heads], `attention_merge_train`

const ROWS: u32 = 16u;
const MASKED: f32 = -3.0e38;

// The merged output of element idx (row i, head) over `parts` parts: (output, log-sum-exp).
fn merge(idx: u32, i: u32, head: u32, parts: u32) -> array<vec4<f32>, 2> {
    let row4 = p.heads * p.head_dim / 4u;
    var top = MASKED;
    for (var s = 0u; s < parts; s++) {
        top = max(top, lse_parts[(s * p.t + i) * p.heads + head]);
    }
    var acc = vec4<f32>(0.0);
    var weight = 0.0;
    for (var s = 0u; s < parts; s++) {
        let l = lse_parts[(s * p.t + i) * p.heads + head];
        if (l > -1.0e38) {
            let w = exp(l - top);
            acc += w * o_parts[s * p.t * row4 + idx];
            weight += w;
        }
    }
    return array<vec4<f32>, 2>(acc / weight, vec4<f32>(top + log(weight)));
}

@compute @workgroup_size(64)
fn attention_merge(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    let row4 = p.heads * p.head_dim / 4u;
    if (idx >= p.t * row4) {
        return;
    }
    let i = idx / row4;
    let block_end = min((i / ROWS) * ROWS + ROWS, p.t);
    let parts = (p.start + block_end + p.key_split - 1u) / p.key_split;
    out[idx] = merge(idx, i, (idx % row4) / (p.head_dim / 4u), parts)[0];
}

@compute @workgroup_size(64)
fn attention_merge_train(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    let hq = p.head_dim / 4u;
    let row4 = p.heads * hq;
    if (idx >= p.t * row4) {
        return;
    }
    let i = idx / row4;
    let head = (idx % row4) / hq;
    let merged = merge(idx, i, head, p.parts);
    out[idx] = merged[0];
    if (idx % hq == 0u) {
        lse_out[i * p.heads + head] = merged[1].x;
    }
}
