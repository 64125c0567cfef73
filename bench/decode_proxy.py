"""``python -m bench.decode_proxy [results/<card>/qmatmul.json]``: a decode tokens/s PROXY.

Not an end-to-end model run: it sums the measured device times of the four linear layers of one
Llama-3-8B / 70B block (fused qkv, o, fused gate+up, down) at batch 1 from a ``bench.qmatmul``
result file and multiplies by the layer count (32 / 80). Attention, norms, rotary, embedding and
lm_head are left out, so real tokens/s are lower and the ratio is an upper bound of what W4A16
linear layers alone can give. Writes ``decode_proxy.md`` next to the JSON.
"""

from __future__ import annotations

import json
import os
import sys

MODELS = {"Llama-3-8B": ("8b", 32), "Llama-3-70B": ("70b", 80)}
LAYERS = ("qkv", "o", "gate_up", "down")
COLS = ("jquant", "torch_bf16", "xla_bf16", "xla_deq", "tinygemm")


def proxy(results: list[dict], m: int = 1) -> list[tuple[str, dict[str, float]]]:
    by_case = {r["case"]: r for r in results}
    rows = []
    for model, (prefix, n_layers) in MODELS.items():
        per = {}
        for col in COLS:
            ts = [by_case.get(f"{prefix}_{lay} M={m} w4g128", {}).get(col) for lay in LAYERS]
            if all(isinstance(t, float) for t in ts):
                per[col] = n_layers * sum(ts)  # us per token
        if per:
            rows.append((model, per))
    return rows


def main(argv=None) -> int:
    argv = argv if argv is not None else sys.argv[1:]
    path = argv[0] if argv else os.path.join(os.path.dirname(__file__), "results", "nvidia_h200", "qmatmul.json")
    with open(path) as f:
        data = json.load(f)
    env = data["env"]
    lines = [
        "# Decode proxy (linear layers only, batch 1) - NOT an end-to-end model run",
        "",
        f"- from `{os.path.basename(path)}`: card {env['card']}, jax {env['jax']}, torch {env['torch']}, "
        f"triton {env['triton']}, commit {env['commit']}",
        "- us/token = layers x (qkv + o + gate_up + down) device time at M=1, W4A16 g128 vs bf16;"
        " attention, norms, embedding and lm_head excluded.",
        "",
        "| model | "
        + " | ".join(f"{c} us/token (tok/s)" for c in COLS)
        + " | torch_bf16 / jquant | xla_bf16 / jquant |",
        "|---" * (len(COLS) + 3) + "|",
    ]
    for model, per in proxy(data["results"]):
        cells = [f"{per[c]:.0f} ({1e6 / per[c]:.0f})" if c in per else "-" for c in COLS]
        r1 = f"{per['torch_bf16'] / per['jquant']:.2f}" if {"torch_bf16", "jquant"} <= per.keys() else "-"
        r2 = f"{per['xla_bf16'] / per['jquant']:.2f}" if {"xla_bf16", "jquant"} <= per.keys() else "-"
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {r1} | {r2} |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(os.path.dirname(path), "decode_proxy.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
