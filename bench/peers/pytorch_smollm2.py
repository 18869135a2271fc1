#!/usr/bin/env python3
"""PyTorch peer for `userrl bench nn`: a LLaMA model with the SmolLM2-135M config (random init, f32): one
training step (forward + backward + AdamW) at seq 512, batch 1, and with `--inference` also prefill tokens/s of
a 512-token prompt and batch-1 decode tokens/s through a KV cache (32 steps after 64 tokens), the shapes
`userrl bench nn` uses. `--device cuda` runs on an NVIDIA GPU with TF32 off (true f32 matmuls, the arithmetic
our WGSL kernels do). Prints one JSON line.

    pip install torch numpy   # CPU wheel: see bench/README.md
    python3 bench/peers/pytorch_smollm2.py --threads 2
    python3 bench/peers/pytorch_smollm2.py --device cuda --inference
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIG = dict(vocab=49152, hidden=576, layers=30, heads=9, kv_heads=3, ffn=1536, rope_theta=100000.0, eps=1e-5)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope(x, cos, sin):
    # Adjacent pairs (2i, 2i+1), as the GGUF llama layout and our CPU backend use.
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        h, hd = c["hidden"], c["hidden"] // c["heads"]
        self.heads, self.kv_heads, self.hd = c["heads"], c["kv_heads"], hd
        self.attn_norm = RMSNorm(h, c["eps"])
        self.wq = nn.Linear(h, h, bias=False)
        self.wk = nn.Linear(h, c["kv_heads"] * hd, bias=False)
        self.wv = nn.Linear(h, c["kv_heads"] * hd, bias=False)
        self.wo = nn.Linear(h, h, bias=False)
        self.ffn_norm = RMSNorm(h, c["eps"])
        self.gate = nn.Linear(h, c["ffn"], bias=False)
        self.up = nn.Linear(h, c["ffn"], bias=False)
        self.down = nn.Linear(c["ffn"], h, bias=False)

    def forward(self, x, cos, sin, cache=None):
        b, t, _ = x.shape
        n = self.attn_norm(x)
        q = self.wq(n).view(b, t, self.heads, self.hd).transpose(1, 2)
        k = self.wk(n).view(b, t, self.kv_heads, self.hd).transpose(1, 2)
        v = self.wv(n).view(b, t, self.kv_heads, self.hd).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        past = 0
        if cache is not None:
            # cache: [k, v] of earlier positions (None before the first call).
            if cache[0] is not None:
                past = cache[0].shape[2]
                k, v = torch.cat((cache[0], k), dim=2), torch.cat((cache[1], v), dim=2)
            cache[0], cache[1] = k, v
        group = self.heads // self.kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        # One new token attends to every cached one; a prompt is causal.
        a = F.scaled_dot_product_attention(q, k, v, is_causal=past == 0 and t > 1)
        x = x + self.wo(a.transpose(1, 2).reshape(b, t, -1))
        n = self.ffn_norm(x)
        return x + self.down(F.silu(self.gate(n)) * self.up(n))


class Llama(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed = nn.Embedding(c["vocab"], c["hidden"])
        self.blocks = nn.ModuleList(Block(c) for _ in range(c["layers"]))
        self.norm = RMSNorm(c["hidden"], c["eps"])

    def forward(self, ids, caches=None, start=0, last_only=False):
        c, t, dev = self.c, ids.shape[1], ids.device
        hd = c["hidden"] // c["heads"]
        freq = c["rope_theta"] ** (-torch.arange(0, hd, 2, dtype=torch.float32, device=dev) / hd)
        angle = torch.arange(start, start + t, dtype=torch.float32, device=dev)[:, None] * freq[None, :]
        cos, sin = angle.cos(), angle.sin()
        x = self.embed(ids)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, None if caches is None else caches[i])
        if last_only:
            x = x[:, -1:, :]
        return self.norm(x) @ self.embed.weight.T  # tied LM head


def timed(device, f, runs):
    """Median seconds of `runs` calls of f after one warm-up; waits for the GPU before reading the clock."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    f()
    sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        f()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def inference(model, device, prompt_len, context, steps, runs):
    vocab, layers = model.c["vocab"], model.c["layers"]
    prompt = torch.randint(0, vocab, (1, prompt_len), device=device)
    with torch.no_grad():
        prefill_s = timed(device, lambda: model(prompt, [[None, None] for _ in range(layers)], 0, True), runs)
        ids = torch.randint(0, vocab, (1, context + steps), device=device)

        def decode():
            caches = [[None, None] for _ in range(layers)]
            model(ids[:, :context], caches, 0, True)
            sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
            sync()
            start = time.perf_counter()
            for i in range(context, context + steps):
                model(ids[:, i : i + 1], caches, i, True)
            sync()
            return time.perf_counter() - start

        decode()
        decode_s = statistics.median(decode() for _ in range(runs))
    return {"prefill_tokens": prompt_len, "prefill_tokens_per_s": prompt_len / prefill_s,
            "decode_context": context, "decode_steps": steps, "decode_batch1_tokens_per_s": steps / decode_s}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--inference", action="store_true", help="also prefill and batch-1 decode tokens/s")
    p.add_argument("--runs", type=int, default=5, help="timed runs per inference number")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    # f32 means f32: no TF32 tensor-core shortcuts on the GPU.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch.manual_seed(0)
    device = args.device
    model = Llama(CONFIG).to(device)
    extra = {}
    if args.inference:
        extra = inference(model, device, 512, 64, 32, args.runs)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    ids = torch.randint(0, CONFIG["vocab"], (args.batch, args.seq + 1), device=device)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times, losses = [], []
    for step in range(args.steps + 1):
        sync()
        start = time.perf_counter()
        logits = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, CONFIG["vocab"]), targets.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        elapsed = time.perf_counter() - start
        losses.append(loss.item())
        if step > 0:
            times.append(elapsed)
    median = statistics.median(times)
    print(json.dumps({
        "peer": "pytorch",
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "threads": args.threads,
        "dtype": "f32",
        "seq": args.seq,
        "batch": args.batch,
        "params": sum(p.numel() for p in model.parameters()),
        "steps": args.steps,
        "step_s_median": median,
        "train_tokens_per_s": args.seq * args.batch / median,
        "first_loss": losses[0],
        **extra,
    }))


if __name__ == "__main__":
    main()
