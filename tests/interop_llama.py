"""Interop check run by tests/trainer_interop.rs: a real client (transformers + peft) loads the
project's tiny base and adapter and must reproduce the project's logits; transformers must build
the same tensor names and shapes as the project for real Llama-architecture configs.

Usage: interop_llama.py <dir> where <dir> holds base/, adapter/, rust.safetensors, shapes.json.
Prints one line per check; exits non-zero on any mismatch."""
import json
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

TOL = 1e-4


def main(d):
    ok = True
    torch.set_num_threads(1)
    base = LlamaForCausalLM.from_pretrained(f"{d}/base", dtype=torch.float32, attn_implementation="eager")
    model = PeftModel.from_pretrained(base, f"{d}/adapter")
    model.eval()
    ref = load_file(f"{d}/rust.safetensors")
    tokens = ref["tokens"].long()
    with torch.no_grad():
        adapted = model(input_ids=tokens).logits
        with model.disable_adapter():
            plain = model(input_ids=tokens).logits
    for name, got, want in [("adapter", adapted, ref["logits_adapter"]), ("base", plain, ref["logits_base"])]:
        diff = (got - want).abs().max().item()
        print(f"logits {name}: max abs diff {diff:.3e} (tolerance {TOL:.0e})")
        ok &= diff <= TOL
    moved = (adapted - plain).abs().max().item()
    print(f"adapter moves logits by {moved:.3e}")
    ok &= moved > 10 * TOL

    for name, spec in json.load(open(f"{d}/shapes.json")).items():
        cfg = LlamaConfig(**spec["config"])
        with torch.device("meta"):
            m = LlamaForCausalLM(cfg)
        got = {k: list(v.shape) for k, v in m.state_dict().items()}
        if cfg.tie_word_embeddings:
            got.pop("lm_head.weight", None)
        want = {k: v for k, v in spec["shapes"]}
        same = got == want
        print(f"shapes {name}: {len(want)} tensors {'match' if same else 'DIFFER'}")
        if not same:
            for k in sorted(set(got) | set(want)):
                if got.get(k) != want.get(k):
                    print(f"  {k}: transformers {got.get(k)} project {want.get(k)}")
        ok &= same
    print("interop ok" if ok else "interop FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
