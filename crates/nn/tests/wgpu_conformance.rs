//! Conformance of the wgpu backend against the CPU backend (the oracle): every kernel on small shapes, then a whole
//! tiny random LLaMA, prompt and incremental decoding. Runs on lavapipe in CI; with no adapter at all it fails and
//! says to run scripts/setup.

use userrl_nn::backend::LogitsModel;
use userrl_nn::batch::{SeqCache, forward_last_batch};
use userrl_nn::engine::{Engine, EngineConfig, Request};
use userrl_nn::generate::{Sampling, generate, generate_with};
use userrl_nn::model::{Layer, Llama, LlamaConfig, ModelError, linear, rms_norm, rope};
use userrl_nn::wgpu::{Device, MatmulTiles, WgpuError, WgpuLlama};

mod common;
use common::{device, random, rel_err};

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    let e = rel_err(got, want);
    assert!(e <= 1e-4, "{what}: relative error {e}");
    assert!(got.iter().all(|v| v.is_finite()), "{what}: non-finite output");
}

#[test]
fn linear_matches_cpu() {
    // Few rows take the reduction kernel, more the 4×4-blocked one (both tilings, the shared one also split along
    // k into 2-4 parts, as GPUs run products with few tiles); odd sizes hit the edges.
    let shared = device().with_matmul_tiles(MatmulTiles::Shared);
    for dev in [
        device().with_matmul_tiles(MatmulTiles::Registers),
        shared.with_split_k_target(0),
        shared.with_split_k_target(1 << 20),
    ] {
        linear_matches_cpu_on(&dev);
    }
}

fn linear_matches_cpu_on(dev: &Device) {
    for (i, &(t, k, n)) in [
        (1, 64, 64),
        (3, 128, 201),
        (8, 64, 64),
        (65, 256, 130),
        (200, 128, 256),
        (7, 4, 3),
        (70, 40, 68),
        (9, 200, 36),
    ]
    .iter()
    .enumerate()
    {
        let x = random(t * k, i as u64 + 1, 1.0);
        let w = random(n * k, i as u64 + 100, 0.5);
        let mut want = vec![0.0; t * n];
        linear(&x, t, &w, k, n, &mut want);
        let (gx, gw, gy) = (dev.upload(&x).unwrap(), dev.upload_matrix(&w, n, k).unwrap(), dev.zeros(t * n).unwrap());
        let mut b = dev.batch();
        b.linear(&gx, t, &gw, &gy).unwrap();
        b.submit().unwrap();
        let what = format!("linear {t}x{k}x{n} {:?} split-k {}", dev.matmul_tiles(), dev.split_k_target());
        assert_close(&what, &dev.download(&gy).unwrap(), &want);
        // The accumulating form (the residual connection) adds the product to what y holds.
        let mut b = dev.batch();
        b.linear_add(&gx, t, &gw, &gy).unwrap();
        b.submit().unwrap();
        let twice: Vec<f32> = want.iter().map(|v| 2.0 * v).collect();
        assert_close(&format!("{what} added"), &dev.download(&gy).unwrap(), &twice);
    }
}

#[test]
fn linear_over_row_chunks_and_into_a_window() {
    // A 16 KiB binding cap splits the 300×64 matrix into 5 chunks, as a 128 MiB cap splits a large LM head.
    let dev = device();
    let small = dev.with_binding_limit(16 << 10);
    let (t, k, n) = (20, 64, 300);
    let x = random(t * k, 7, 1.0);
    let w = random(n * k, 8, 0.5);
    let gw = small.upload_matrix(&w, n, k).unwrap();
    assert_eq!(gw.chunk_count(), 5);
    let gx = dev.upload(&x).unwrap();
    let mut want = vec![0.0; t * n];
    linear(&x, t, &w, k, n, &mut want);
    let gy = dev.zeros(t * n).unwrap();
    let mut b = dev.batch();
    b.linear(&gx, t, &gw, &gy).unwrap();
    // Row 13 alone into columns 5.. of a [2, 310] buffer (how the LM head takes the last position).
    let window = dev.zeros(2 * 310).unwrap();
    b.linear_into(&gx, 13, 1, &gw, &window, 310 + 5, 310).unwrap();
    b.submit().unwrap();
    assert_close("chunked linear", &dev.download(&gy).unwrap(), &want);
    let got = dev.download(&window).unwrap();
    assert_close("windowed linear", &got[315..615], &want[13 * n..14 * n]);
    assert!(got[..315].iter().chain(&got[615..]).all(|&v| v == 0.0), "wrote outside its window");
    // Tensors past the cap are refused, not truncated.
    assert!(matches!(small.zeros(8 << 10), Err(WgpuError::TooLarge { .. })));
}

#[test]
fn rms_norm_matches_cpu() {
    let dev = device();
    for (i, &(rows, dim)) in [(1, 64), (5, 256), (3, 100)].iter().enumerate() {
        let x = random(rows * dim, 20 + i as u64, 3.0);
        let w = random(dim, 30 + i as u64, 1.0);
        let mut want = vec![0.0; rows * dim];
        rms_norm(&x, &w, 1e-5, dim, &mut want);
        let (gx, gw, go) = (dev.upload(&x).unwrap(), dev.upload(&w).unwrap(), dev.zeros(rows * dim).unwrap());
        let mut b = dev.batch();
        b.rms_norm(&gx, &gw, 1e-5, dim, rows, &go).unwrap();
        b.submit().unwrap();
        assert_close(&format!("rms_norm {rows}x{dim}"), &dev.download(&go).unwrap(), &want);
    }
}

#[test]
fn qkv_rope_matches_cpu() {
    // A fused [rows, q | k | v] projection: q rotated into its buffer, k rotated and v copied into cache rows
    // start.. (rows before start and after the new ones keep what they held). The rows may start at row0 of qkv
    // and q (one sequence of a batch): rows of q outside them keep what they held.
    let dev = device();
    for (i, &(row0, rows, heads, kv_heads, hd, start)) in
        [(0, 1, 4, 2, 64, 0), (2, 7, 3, 1, 32, 100), (1, 5, 2, 2, 128, 250)].iter().enumerate()
    {
        let (h, kvd) = (heads * hd, kv_heads * hd);
        let width = h + 2 * kvd;
        let qkv = random((row0 + rows + 1) * width, 40 + i as u64, 1.0);
        let positions = start + rows + 3;
        let (k0, v0) = (random(positions * kvd, 50 + i as u64, 1.0), random(positions * kvd, 60 + i as u64, 1.0));
        let q0 = random((row0 + rows + 1) * h, 70 + i as u64, 1.0);
        let (mut want_q, mut want_k, mut want_v) = (q0.clone(), k0.clone(), v0.clone());
        for r in 0..rows {
            let row = &qkv[(row0 + r) * width..(row0 + r + 1) * width];
            let q = &mut want_q[(row0 + r) * h..(row0 + r + 1) * h];
            let k = &mut want_k[(start + r) * kvd..(start + r + 1) * kvd];
            q.copy_from_slice(&row[..h]);
            rope(q, hd, start + r, 10_000.0);
            k.copy_from_slice(&row[h..h + kvd]);
            rope(k, hd, start + r, 10_000.0);
            want_v[(start + r) * kvd..(start + r + 1) * kvd].copy_from_slice(&row[h + kvd..]);
        }
        let table = dev.rope_table(10_000.0, hd, positions).unwrap();
        let (gqkv, gq) = (dev.upload(&qkv).unwrap(), dev.upload(&q0).unwrap());
        let (gk, gv) = (dev.upload(&k0).unwrap(), dev.upload(&v0).unwrap());
        let mut b = dev.batch();
        b.qkv_rope(&gqkv, row0, rows, h, kvd, hd, start, &table, &gq, &gk, &gv).unwrap();
        b.submit().unwrap();
        let what = format!("{rows}x({heads}+2x{kv_heads})x{hd}@{start} from row {row0}");
        assert_close(&format!("rope q {what}"), &dev.download(&gq).unwrap(), &want_q);
        assert_close(&format!("rope k {what}"), &dev.download(&gk).unwrap(), &want_k);
        assert_eq!(dev.download(&gv).unwrap(), want_v, "v {what}");
    }
}

/// The attention of model.rs `hidden_states`, written out naively.
#[allow(clippy::too_many_arguments)]
fn attention_cpu(
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    t: usize,
    start: usize,
    heads: usize,
    kv_heads: usize,
    hd: usize,
) -> Vec<f32> {
    let (h, kvd) = (heads * hd, kv_heads * hd);
    let mut out = vec![0.0; t * h];
    for i in 0..t {
        for head in 0..heads {
            let kvh = head / (heads / kv_heads);
            let qh = &q[i * h + head * hd..][..hd];
            let scores: Vec<f32> = (0..start + i + 1)
                .map(|j| {
                    let kj = &kc[j * kvd + kvh * hd..][..hd];
                    qh.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() / (hd as f32).sqrt()
                })
                .collect();
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = scores.iter().map(|s| (s - max).exp()).sum();
            for (j, s) in scores.iter().enumerate() {
                let w = (s - max).exp() / sum;
                for d in 0..hd {
                    out[i * h + head * hd + d] += w * vc[j * kvd + kvh * hd + d];
                }
            }
        }
    }
    out
}

#[test]
fn attention_matches_cpu() {
    // Prefill from empty, decode deep into the cache (several 64-key blocks), prefill after a prefix; GQA groups;
    // with the blocked kernels on, prefills of 16+ rows with head dims up to 64 (a multiple of 4) take them.
    let cases = [
        (5, 0, 4, 2, 64),
        (1, 130, 4, 2, 64),
        (70, 30, 2, 1, 128),
        (3, 61, 6, 3, 32),
        (2, 10, 2, 2, 256),
        (40, 100, 6, 2, 64),
        (17, 0, 2, 1, 20),
        (200, 0, 2, 1, 64),
        (100, 37, 4, 2, 32),
    ];
    for blocked in [false, true] {
        cache_attention_matches_cpu_on(&device().with_blocked_attention(blocked).with_attention_key_split(0), &cases);
    }
    // Keys in parts of 64 (GPUs default to 128): rows past a part's keys, blocks with fewer parts than the longest.
    cache_attention_matches_cpu_on(&device().with_blocked_attention(true).with_attention_key_split(64), &cases);
    // Under a 256 KiB binding cap the 200-row prefill's four parts' outputs would not fit one buffer: two parts of
    // 128 keys instead.
    let capped = device().with_binding_limit(256 << 10);
    cache_attention_matches_cpu_on(&capped.with_blocked_attention(true).with_attention_key_split(64), &cases);
}

fn cache_attention_matches_cpu_on(dev: &Device, cases: &[(usize, usize, usize, usize, usize)]) {
    for (i, &(t, start, heads, kv_heads, hd)) in cases.iter().enumerate() {
        // Fewer rows than a block can start at a row offset (one sequence's rows in a batch); rows of the output
        // outside them stay as they were.
        let row0 = if t < 16 { 1 + i % 3 } else { 0 };
        let (positions, width) = (start + t, heads * hd);
        let q = random((row0 + t) * width, 50 + i as u64, 2.0);
        let kc = random(positions * kv_heads * hd, 60 + i as u64, 2.0);
        let vc = random(positions * kv_heads * hd, 70 + i as u64, 1.0);
        let mut want = vec![0.0; row0 * width];
        want.extend(attention_cpu(&q[row0 * width..], &kc, &vc, t, start, heads, kv_heads, hd));
        let (gq, gk, gv) = (dev.upload(&q).unwrap(), dev.upload(&kc).unwrap(), dev.upload(&vc).unwrap());
        let go = dev.zeros((row0 + t) * width).unwrap();
        let mut b = dev.batch();
        b.attention(&gq, &gk, &gv, &go, row0, t, start, heads, kv_heads, hd).unwrap();
        b.submit().unwrap();
        assert_close(
            &format!(
                "attention t={t} from row {row0} start={start} {heads}/{kv_heads}x{hd} blocked {} key split {}",
                dev.blocked_attention(),
                dev.attention_key_split()
            ),
            &dev.download(&go).unwrap(),
            &want,
        );
    }
}

#[test]
fn swiglu_add_embed_and_copy_match_cpu() {
    let dev = device();
    let (rows, ffn) = (8, 125);
    let n = rows * ffn;
    let (g, u) = (random(n, 80, 6.0), random(n, 81, 2.0));
    // model.rs: gate = gate / (1 + exp(-gate)) * up, here from one [rows, gate | up] buffer; x += proj.
    let want_swiglu: Vec<f32> = g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
    let want_add: Vec<f32> = g.iter().zip(&u).map(|(a, b)| a + b).collect();
    let gate_up: Vec<f32> =
        (0..rows).flat_map(|r| [&g[r * ffn..(r + 1) * ffn], &u[r * ffn..(r + 1) * ffn]].concat()).collect();
    let (ggu, gact) = (dev.upload(&gate_up).unwrap(), dev.zeros(n).unwrap());
    let (gu, gx) = (dev.upload(&u).unwrap(), dev.upload(&g).unwrap());
    // Embedding rows 0..50 of 64 floats, split into chunks of 16 rows by a 4 KiB cap.
    let small = dev.with_binding_limit(4 << 10);
    let table = random(50 * 64, 82, 1.0);
    let gt = small.upload_matrix(&table, 50, 64).unwrap();
    assert_eq!(gt.chunk_count(), 4);
    let tokens = [3u32, 49, 0, 17, 16, 32];
    let ids = dev.upload_u32(&tokens).unwrap();
    let ge = dev.zeros(tokens.len() * 64).unwrap();
    let copied = dev.zeros(n + 10).unwrap();
    let mut b = dev.batch();
    b.swiglu(&ggu, rows, ffn, &gact).unwrap();
    b.add(&gx, &gu, n).unwrap();
    b.embed(&ids, tokens.len(), &gt, &ge).unwrap();
    b.copy(&gx, 0, &copied, 10, n).unwrap();
    b.submit().unwrap();
    assert_close("swiglu", &dev.download(&gact).unwrap(), &want_swiglu);
    assert_close("add", &dev.download(&gx).unwrap(), &want_add);
    assert_close("copy", &dev.download_range(&copied, 10, n).unwrap(), &want_add);
    let want_embed: Vec<f32> = tokens.iter().flat_map(|&t| table[t as usize * 64..][..64].to_vec()).collect();
    assert_eq!(dev.download(&ge).unwrap(), want_embed);
}

fn tiny_llama(tied: bool) -> Llama {
    let config = LlamaConfig {
        vocab: 300,
        hidden: 64,
        layers: 9, // past LAYERS_PER_SUBMIT (8): a forward spans two queue submissions
        heads: 4,
        kv_heads: 2,
        ffn: 96,
        rope_theta: 10_000.0,
        eps: 1e-5,
        context: 400,
    };
    let (h, kvd, f) = (config.hidden, config.kv_dim(), config.ffn);
    let mut seed = 1000;
    let mut r = |n: usize, scale: f32| {
        seed += 1;
        random(n, seed, scale)
    };
    let layers = (0..config.layers)
        .map(|_| Layer {
            attn_norm: r(h, 0.2).iter().map(|v| 1.0 + v).collect(),
            wq: r(h * h, 0.3),
            wk: r(kvd * h, 0.3),
            wv: r(kvd * h, 0.3),
            wo: r(h * h, 0.2),
            ffn_norm: r(h, 0.2).iter().map(|v| 1.0 + v).collect(),
            w_gate: r(f * h, 0.3),
            w_up: r(f * h, 0.3),
            w_down: r(h * f, 0.2),
        })
        .collect();
    Llama {
        embed: r(config.vocab * h, 1.0),
        norm: r(h, 0.2).iter().map(|v| 1.0 + v).collect(),
        lm_head: if tied { None } else { Some(r(config.vocab * h, 0.5)) },
        layers,
        config,
        half: None,
    }
}

#[test]
fn tiny_llama_gives_the_cpu_logits() {
    // The 32 KiB cap splits the [300, 64] embedding / LM head into 3 chunks (the path of large vocabularies).
    let dev = device().with_binding_limit(32 << 10);
    let cases = [(true, MatmulTiles::Registers), (false, MatmulTiles::Registers), (true, MatmulTiles::Shared)];
    for (tied, tiles) in cases {
        let dev = dev.with_matmul_tiles(tiles);
        let cpu = tiny_llama(tied);
        let gpu = WgpuLlama::new(&dev, &cpu).unwrap();
        let prompt: Vec<u32> = (0..12).map(|i| (i * 37 + 5) % 300).collect();
        let (mut cc, mut gc) = (cpu.new_cache(), gpu.new_cache());
        let want = cpu.forward_last(&prompt, &mut cc).unwrap();
        let got = gpu.forward_last(&prompt, &mut gc).unwrap();
        assert_close(&format!("prefill logits (tied {tied}, {tiles:?})"), &got, &want);
        for step in 0..4u32 {
            let tok = [(step * 91 + 7) % 300];
            let want = cpu.forward_last(&tok, &mut cc).unwrap();
            let got = gpu.forward_last(&tok, &mut gc).unwrap();
            assert_close(&format!("decode step {step} (tied {tied})"), &got, &want);
        }
        assert_eq!(gc.len, cc.len);
    }
}

#[test]
fn tiny_llama_long_prompt_chunks_and_grows_the_cache() {
    // 300 tokens run as three prefill chunks, their attention in parts of 64 keys (as GPUs run it, 128 there);
    // decoding past the first cache allocation copies the cache over.
    let dev = device().with_attention_key_split(64);
    let cpu = tiny_llama(true);
    let gpu = WgpuLlama::new(&dev, &cpu).unwrap().with_prefill_chunk(128);
    let prompt: Vec<u32> = (0..300).map(|i| (i * 13 + 1) % 300).collect();
    let (mut cc, mut gc) = (cpu.new_cache(), gpu.new_cache());
    assert_close(
        "long prefill",
        &gpu.forward_last(&prompt, &mut gc).unwrap(),
        &cpu.forward_last(&prompt, &mut cc).unwrap(),
    );
    for tok in [5u32, 299] {
        assert_close(
            "decode",
            &gpu.forward_last(&[tok], &mut gc).unwrap(),
            &cpu.forward_last(&[tok], &mut cc).unwrap(),
        );
    }
    // Greedy decoding through the shared trait picks the same tokens on both backends.
    let sampling = Sampling { max_new_tokens: 6, ..Sampling::default() };
    let short = &prompt[..20];
    let want = generate(&cpu, short, &[], &sampling).unwrap();
    let got = generate_with(&gpu, short, &[], &sampling).unwrap();
    assert_eq!(got.tokens, want.tokens);
    assert_close("log-probs", &got.logprobs, &want.logprobs);
    assert_eq!(<WgpuLlama as LogitsModel>::config(&gpu), &cpu.config);
}

#[test]
fn batched_forward_matches_the_cpu_batch_and_each_sequence_alone() {
    let dev = device();
    let cpu = tiny_llama(false);
    let gpu = WgpuLlama::new(&dev, &cpu).unwrap();
    // Five sequences with caches of 3, 10, 0, 7 and 40 positions; new tokens 1, 1, 20 (a prompt: alone), 4, 1.
    let history: Vec<Vec<u32>> =
        [3, 10, 0, 7, 40].iter().map(|&n| (0..n).map(|i| (i * 31 + n * 7 + 2) % 300).collect()).collect();
    let fresh: Vec<Vec<u32>> =
        [1, 1, 20, 4, 1].iter().map(|&n| (0..n).map(|i| (i * 17 + n + 9) % 300).collect()).collect();
    let mut cpu_caches: Vec<SeqCache> = (0..5).map(|_| SeqCache::new(&cpu)).collect();
    let mut gpu_caches: Vec<_> = (0..5).map(|_| gpu.new_cache()).collect();
    let mut alone: Vec<_> = (0..5).map(|_| gpu.new_cache()).collect();
    for i in 0..5 {
        if !history[i].is_empty() {
            forward_last_batch(&cpu, &[&history[i]], std::slice::from_mut(&mut cpu_caches[i])).unwrap();
            gpu.forward_last(&history[i], &mut gpu_caches[i]).unwrap();
            gpu.forward_last(&history[i], &mut alone[i]).unwrap();
        }
    }
    let tokens: Vec<&[u32]> = fresh.iter().map(Vec::as_slice).collect();
    let want = forward_last_batch(&cpu, &tokens, &mut cpu_caches).unwrap();
    let got = gpu.forward_last_batch(&tokens, &mut gpu_caches).unwrap();
    assert_close("batched logits", &got, &want);
    for i in 0..5 {
        assert_eq!(gpu_caches[i].len, cpu_caches[i].len);
        // The shared forward has 7 rows: under 8 its products run row by row, so each sequence gets exactly what
        // it gets alone.
        let own = gpu.forward_last(tokens[i], &mut alone[i]).unwrap();
        assert_eq!(&got[i * 300..(i + 1) * 300], &own[..], "sequence {i}");
    }
    // The next step continues from the caches the batch grew.
    let step: Vec<[u32; 1]> = (0..5).map(|i| [(i * 50 + 3) as u32]).collect();
    let step: Vec<&[u32]> = step.iter().map(|t| t.as_slice()).collect();
    let want = forward_last_batch(&cpu, &step, &mut cpu_caches).unwrap();
    assert_close("second step", &gpu.forward_last_batch(&step, &mut gpu_caches).unwrap(), &want);
    // A copied prefix continues like the cache it came from.
    let mut copy = gpu.prefix_cache(&gpu_caches[4], 30).unwrap();
    // Exactly the copied rows (the prefix store charges a copy by its length).
    assert_eq!((copy.len, copy.capacity()), (30, 30));
    let mut cpu_copy = cpu_caches[4].prefix(30);
    let cont = [7u32, 8, 9];
    assert_close(
        "after a copied prefix",
        &gpu.forward_last_batch(&[&cont], std::slice::from_mut(&mut copy)).unwrap(),
        &forward_last_batch(&cpu, &[&cont], std::slice::from_mut(&mut cpu_copy)).unwrap(),
    );
    // Bad batches: the CPU's errors, and no cache moves.
    let lens: Vec<usize> = gpu_caches.iter().map(|c| c.len).collect();
    let err = |t: &[&[u32]], c: &mut [_]| gpu.forward_last_batch(t, c).unwrap_err();
    assert!(matches!(err(&[], &mut []), WgpuError::Model(ModelError::Empty)));
    assert!(matches!(err(&[&[1], &[]], &mut gpu_caches[..2]), WgpuError::Model(ModelError::Empty)));
    assert!(matches!(err(&[&[1]], &mut gpu_caches[..2]), WgpuError::Model(ModelError::Empty)));
    assert!(matches!(err(&[&[1], &[300]], &mut gpu_caches[..2]), WgpuError::Model(ModelError::BadToken { .. })));
    let long = vec![1u32; 400];
    assert!(matches!(err(&[&[1], &long], &mut gpu_caches[..2]), WgpuError::Model(ModelError::ContextOverflow { .. })));
    assert_eq!(gpu_caches.iter().map(|c| c.len).collect::<Vec<_>>(), lens);

    // Shared forwards of at most 4 rows: 10 new tokens run alone in chunks, the rest in groups of 1 + 2 and 3.
    let small = WgpuLlama::new(&dev, &cpu).unwrap().with_prefill_chunk(4);
    let fresh: Vec<Vec<u32>> = [1, 10, 2, 3].iter().map(|&n| (0..n).map(|i| (i * 13 + n) % 300).collect()).collect();
    let tokens: Vec<&[u32]> = fresh.iter().map(Vec::as_slice).collect();
    let mut cpu_caches: Vec<SeqCache> = (0..4).map(|_| SeqCache::new(&cpu)).collect();
    let mut gpu_caches: Vec<_> = (0..4).map(|_| small.new_cache()).collect();
    assert_close(
        "groups under a 4-row chunk",
        &small.forward_last_batch(&tokens, &mut gpu_caches).unwrap(),
        &forward_last_batch(&cpu, &tokens, &mut cpu_caches).unwrap(),
    );
    assert_eq!(gpu_caches.iter().map(|c| c.len).collect::<Vec<_>>(), [1, 10, 2, 3]);
}

#[test]
fn the_engine_serves_on_the_gpu_model() {
    // Four greedy requests at once through continuous batching on the GPU model (two sharing a prompt prefix, so
    // the prefix store copies device caches) give the tokens each gets alone through `generate_with`.
    let dev = device();
    let cpu = tiny_llama(true);
    let gpu = std::sync::Arc::new(WgpuLlama::new(&dev, &cpu).unwrap());
    let config = EngineConfig { prefix_min_tokens: 4, ..EngineConfig::default() };
    let engine = Engine::new(gpu.clone(), config).unwrap();
    let sampling = Sampling { max_new_tokens: 8, ..Sampling::default() };
    let shared: Vec<u32> = (0..24).map(|i| (i * 11 + 4) % 300).collect();
    let prompts: Vec<Vec<u32>> =
        vec![shared.clone(), [&shared[..], &[5, 6]].concat(), (0..9).map(|i| (i * 23 + 1) % 300).collect(), vec![42]];
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| {
            engine
                .generate(Request { tokens: p.clone(), stop: Vec::new(), sampling: sampling.clone(), constraint: None })
                .unwrap()
        })
        .collect();
    for (prompt, stream) in prompts.iter().zip(streams) {
        let (got, _) = stream.wait().unwrap();
        let want = generate_with(gpu.as_ref(), prompt, &[], &sampling).unwrap();
        assert_eq!(got.tokens, want.tokens, "prompt of {} tokens", prompt.len());
        assert_close("engine log-probs", &got.logprobs, &want.logprobs);
    }
}

#[test]
fn wgpu_llama_rejects_bad_input_like_the_cpu() {
    let dev = device();
    let cpu = tiny_llama(true);
    let gpu = WgpuLlama::new(&dev, &cpu).unwrap();
    let mut cache = gpu.new_cache();
    assert!(matches!(gpu.forward_last(&[], &mut cache), Err(WgpuError::Model(ModelError::Empty))));
    assert!(matches!(gpu.forward_last(&[300], &mut cache), Err(WgpuError::Model(ModelError::BadToken { .. }))));
    let too_long = vec![1u32; 401];
    assert!(matches!(
        gpu.forward_last(&too_long, &mut cache),
        Err(WgpuError::Model(ModelError::ContextOverflow { .. }))
    ));
    assert_eq!(cache.len, 0);
}

#[test]
fn a_profiled_device_times_each_kernel() {
    // lavapipe, like NVIDIA's and AMD's Vulkan drivers, has timestamp queries.
    let dev = Device::wgpu_profiled().unwrap();
    let (t, k, n) = (16, 64, 40);
    let (gx, gw, gy) = (
        dev.upload(&random(t * k, 1, 1.0)).unwrap(),
        dev.upload_matrix(&random(n * k, 2, 1.0), n, k).unwrap(),
        dev.zeros(t * n).unwrap(),
    );
    let (norm_weight, normed) = (dev.upload(&vec![1.0; n]).unwrap(), dev.zeros(t * n).unwrap());
    for _ in 0..3 {
        let mut b = dev.batch();
        b.linear(&gx, t, &gw, &gy).unwrap();
        b.rms_norm(&gy, &norm_weight, 1e-5, n, t, &normed).unwrap();
        b.submit().unwrap();
    }
    let profile = dev.take_profile().expect("timestamps on this adapter");
    let kernels: Vec<_> = profile.iter().map(|p| (p.kernel, p.dispatches)).collect();
    assert!(kernels.contains(&("rms_norm", 3)), "{kernels:?}");
    assert!(kernels.iter().any(|(name, n)| name.starts_with("matmul_tiled") && *n == 3), "{kernels:?}");
    assert!(profile.iter().all(|p| p.ms > 0.0 && p.ms.is_finite()), "{profile:?}");
    // Taking the profile resets it; a device opened without profiling has none.
    assert!(dev.take_profile().unwrap().is_empty());
    assert!(device().take_profile().is_none());
}
