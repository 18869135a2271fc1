#!/usr/bin/env python3
"""PyTorch CPU peer for `userrl bench nn`: one training step (forward + backward + AdamW) of a LLaMA model with
the SmolLM2-135M config (random init, f32) at seq 512, batch 1, on N threads. Prints one JSON line.

    pip install torch numpy   # CPU wheel: see bench/README.md
    python3 bench/peers/pytorch_smollm2.py --threads 2
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

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        n = self.attn_norm(x)
        q = self.wq(n).view(b, t, self.heads, self.hd).transpose(1, 2)
        k = self.wk(n).view(b, t, self.kv_heads, self.hd).transpose(1, 2)
        v = self.wv(n).view(b, t, self.kv_heads, self.hd).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        group = self.heads // self.kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
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

    def forward(self, ids):
        c, t = self.c, ids.shape[1]
        hd = c["hidden"] // c["heads"]
        freq = c["rope_theta"] ** (-torch.arange(0, hd, 2, dtype=torch.float32) / hd)
        angle = torch.arange(t, dtype=torch.float32)[:, None] * freq[None, :]
        cos, sin = angle.cos(), angle.sin()
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.norm(x) @ self.embed.weight.T  # tied LM head


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Llama(CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    ids = torch.randint(0, CONFIG["vocab"], (args.batch, args.seq + 1))
    inputs, targets = ids[:, :-1], ids[:, 1:]
    times, losses = [], []
    for step in range(args.steps + 1):
        start = time.perf_counter()
        logits = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, CONFIG["vocab"]), targets.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        elapsed = time.perf_counter() - start
        losses.append(loss.item())
        if step > 0:
            times.append(elapsed)
    median = statistics.median(times)
    print(json.dumps({
        "peer": "pytorch",
        "torch": torch.__version__,
        "threads": args.threads,
        "dtype": "f32",
        "seq": args.seq,
        "batch": args.batch,
        "params": sum(p.numel() for p in model.parameters()),
        "steps": args.steps,
        "step_s_median": median,
        "train_tokens_per_s": args.seq * args.batch / median,
        "first_loss": losses[0],
    }))


if __name__ == "__main__":
    main()
