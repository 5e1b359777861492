"""Reference half of `make bench-train`: the same LoRA training run as `datanet model bench-train`
in Python PyTorch + transformers + PEFT — same base, same initial adapter, same token rows in the
same order, same optimizer (AdamW, linear warm-up, clipping at 1.0), same thread count.

Usage: train_peft.py <dir>   (<dir> written by `datanet model bench-train --out <dir>`)
Prints both loss curves and, last, the RESULT line."""
import json
import resource
import sys
import time

import torch
import torch.nn.functional as F
from peft import PeftModel
from safetensors.torch import load_file
from transformers import LlamaForCausalLM


def main(d):
    rust = json.load(open(f"{d}/rust.json"))
    steps, batch, seq = rust["steps"], rust["batch"], rust["sequence_length"]
    threads = rust["threads"] or torch.get_num_threads()
    torch.set_num_threads(threads)
    device = "cuda" if rust["device"].startswith("Cuda") else "cpu"
    torch.manual_seed(1)

    base = LlamaForCausalLM.from_pretrained(f"{d}/base", dtype=torch.float32, attn_implementation="sdpa")
    model = PeftModel.from_pretrained(base, f"{d}/init_adapter", is_trainable=True).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=rust["learning_rate"], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    warm = rust["warmup_steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else 1.0)
    rows = load_file(f"{d}/data.safetensors")["tokens"].long()

    losses = []
    t0 = None
    for s in range(steps):
        r = rows[s * batch:(s + 1) * batch].to(device)
        inp, tgt = r[:, :seq], r[:, 1:seq + 1]
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=inp).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, rust["clip_norm"])
        opt.step()
        sched.step()
        losses.append(loss.item())
        if s == 0:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
    if device == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    tok_s = (steps - 1) * batch * seq / secs
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    print(f"loss curves ({steps} steps, batch {batch}, seq {seq}, threads {threads}, device {device}):")
    print(f"{'step':>5} {'rust':>10} {'torch+peft':>11} {'diff':>10}")
    max_diff = 0.0
    for i, (a, b) in enumerate(zip(rust["losses"], losses)):
        max_diff = max(max_diff, abs(a - b))
        print(f"{i + 1:>5} {a:>10.5f} {b:>11.5f} {a - b:>10.2e}")
    print(f"max loss difference {max_diff:.2e}")
    ratio = rust["tok_s"] / tok_s
    print(
        f"RESULT rust_tok_s={rust['tok_s']:.0f} torch_peft_tok_s={tok_s:.0f} ratio={ratio:.3f} "
        f"rust_rss_mb={rust['rss_mb']:.0f} torch_rss_mb={rss_mb:.0f}"
    )


if __name__ == "__main__":
    main(sys.argv[1])
