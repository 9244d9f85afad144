"""``rpa-bench lower``: lower each Pallas RPA kernel for TPU generations (no TPU needed).

With no ``kernel=`` override every Pallas backend (rpa_v3, rpa_v2, jax_rpa) is lowered
with its default options; ``kernel=rpa_v3 kernel.source=/path@ref`` lowers one. Prints a
table (kernel, generation, status, custom_calls, kernel names) and exits 1 if any fails.
Knobs: ``lower.generations=[TPU7x] lower.page_size=128 model=llama3_8b_hd256``.
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig, OmegaConf
from rpa_bench.commands._hydra import run_hydra
from rpa_bench.kernels.registry import PALLAS_BACKENDS, fitting, get_backend, kernel_config_from_dict
from rpa_bench.workloads.model import AttentionSpec, ModelSpec

EXTRA_OVERRIDES = (
    "+lower=default",
    "hydra.output_subdir=null",  # prints a table; writes nothing
    "hydra.run.dir=.",
    "hydra/job_logging=disabled",
    "hydra/hydra_logging=disabled",
)


def kernel_was_chosen() -> bool:
    """Whether the command line picked a kernel (``kernel=...``) rather than the default."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    return any(o.split("=", 1)[0].lstrip("+~") == "kernel" for o in HydraConfig.get().overrides.task)


def lower_table(cfg: DictConfig, *, all_pallas: bool) -> list:
    """LoweringResults for the configured kernel(s) and generations."""
    from rpa_bench.kernels.lowering import lower_for_tpu, lowering_batch  # imports JAX: loaded when the command runs

    model = ModelSpec.from_dict(OmegaConf.to_container(cfg.model, resolve=True))
    attn = AttentionSpec(**OmegaConf.to_container(cfg.attention, resolve=True))
    low = cfg.lower
    chosen = kernel_config_from_dict(OmegaConf.to_container(cfg.kernel, resolve=True))
    batch = lowering_batch(int(low.page_size), chunk_prefill_size=low.chunk_prefill_size)
    if all_pallas:  # every Pallas kernel that takes this model and batch (the others say why not)
        names, refused = fitting(PALLAS_BACKENDS, model, attn, batch)
        for name, why in refused.items():
            print(f"rpa-bench lower: {name} not lowered: {why}", file=sys.stderr)
        backends = [get_backend(n) for n in names]
    else:
        backends = [chosen.backend()]
    return [
        lower_for_tpu(b, model, attn, batch, str(g), max_num_batched_tokens=low.max_num_batched_tokens,
                      max_num_seqs=low.max_num_seqs)
        for b in backends
        for g in low.generations
    ]


def format_table(results: list) -> str:
    import pandas as pd

    frame = pd.DataFrame([r.to_row() for r in results])
    frame["error"] = frame["error"].str.slice(0, 120)
    return frame.to_string(index=False)


def task(cfg: DictConfig) -> int:
    results = lower_table(cfg, all_pallas=not kernel_was_chosen())
    print(format_table(results))
    failed = [r for r in results if not r.ok]
    if failed:
        print(f"{len(failed)} of {len(results)} lowerings failed", file=sys.stderr)
        return 1
    print(f"all {len(results)} lowerings ok (StableHLO for TPU; to compile for a TPU generation without one: rpa-bench compile)")
    return 0


def main(argv: list[str]) -> int:
    return run_hydra("rpa-bench lower", task, argv, extra_overrides=EXTRA_OVERRIDES, doc=__doc__)
