"""``rpa-bench tune``: the block sizes of each kernel case, tuned for the traffic you serve.

For a model, a kernel (any kernel that declares its knobs: ``rpa_v3``, ``batched_rpa``,
``stacked_rpa``, ``rpa_v3_hd64``, ``rpa_v2``, ``jax_rpa``; or ``kernel=reference`` whose
``block_bytes`` knob lets the whole machinery run for real on a CPU or GPU) and a workload (a trace's
sampled steps with their time weights, a paper sweep, a batch-spec list, the
speculative-decoding verify shapes), search each phase the workload exercises:

1. candidates from the kernel's rules, the kernel's heuristic tuple always among them;
2. a Pallas kernel: each compiled for the target TPU generation (``tune.generation``; offline with
   libtpu, no TPU needed) and pruned when it does not fit VMEM or compile; verdicts cached;
3. where the kernel can be timed here (a Pallas kernel on a TPU; the reference anywhere): successive
   halving, each rung an interleaved, correctness-gated run of the suite stored under the
   tuning folder (resumable: a rerun measures nothing twice);
4. the best tuple per phase (time-weighted), per bucket, the regret of one tuple for all
   buckets, the heuristic vs the tuned time with CIs, each kernel's own override form for
   serving (``RPA_V3_*_BLOCK_SIZES`` lines; call arguments for the others), a JSON table and
   an HTML page.

Off TPU a Pallas kernel is not timed (interpret mode is not kernel performance): the survivors are
listed with their VMEM headroom and static schedule length, ready to be timed on a TPU, and
the tuple with the shortest schedule is checked for correctness in interpret mode.

Examples:
  rpa-bench tune kernel=reference workload=azure_conv scale=cpu_smoke          # real timing, CPU
  rpa-bench tune kernel=rpa_v3 tune.generation=tpu7x workload=mooncake_conversation scale=cpu_smoke
  rpa-bench tune kernel=rpa_v3 workload=mooncake_conversation                  # on a TPU: tuned for real
"""

from __future__ import annotations

import signal
import sys

from omegaconf import DictConfig, OmegaConf

from rpa_bench.commands import _hydra
from rpa_bench.commands._hydra import run_hydra
from rpa_bench.pipeline import tune_space as tn
from rpa_bench.pipeline.plan import plan_from_config
from rpa_bench.typed import from_dict

EXTRA_OVERRIDES = ("+tune=default", "hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=disabled",
                   "hydra/hydra_logging=disabled")


def _one_entry(cfg: DictConfig, group: str) -> dict:
    """The one kernel / workload tuned: ``run.<group>s`` honoured when it names exactly one
    entry (a ``<group>=`` override wins, as for ``run``), refused when it names several."""
    from hydra import compose as hydra_compose
    from hydra.core.hydra_config import HydraConfig

    task_overrides = list(HydraConfig.get().overrides.task)
    entries = _hydra.compose_entries(group, cfg.run.get(f"{group}s"), cfg[group], task_overrides, hydra_compose)
    if len(entries) != 1:
        names = ", ".join(str(e.get("label") or e.get("name")) for e in entries)
        raise ValueError(f"run.{group}s names {len(entries)} entries ({names}); rpa-bench tune tunes one {group}: "
                         f"give run.{group}s=[<one>] or {group}=<name>")
    return dict(entries[0])


def _on_term(signum, frame):  # SIGTERM as Ctrl-C: no native stack dump, temporary folders cleaned
    raise KeyboardInterrupt("SIGTERM")


def task(cfg: DictConfig) -> int:
    signal.signal(signal.SIGTERM, _on_term)
    from rpa_bench.pipeline.tuner import TuneConfig, Tuner  # imports JAX: loaded when the command runs

    try:
        tcfg = from_dict(TuneConfig, OmegaConf.to_container(cfg.tune, resolve=True), section="tune")
        config = OmegaConf.to_container(cfg, resolve=True)
        kernel_cfg, workload_cfg = _one_entry(cfg, "kernel"), _one_entry(cfg, "workload")
        if kernel_cfg.get("name") not in tn.TUNABLE:
            raise ValueError(f"kernel={kernel_cfg.get('name')}: rpa-bench tune tunes {', '.join(tn.TUNABLE)}")
        plan = plan_from_config(config, workloads=[workload_cfg], kernels=[kernel_cfg], experiment="tune")
        return Tuner(config, tcfg, plan, progress=bool(cfg.run.get("progress", True))).run()
    except ValueError as err:
        print(f"rpa-bench tune: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nrpa-bench tune: interrupted; what was measured and compiled is kept: the same command "
              "resumes", file=sys.stderr)
        return 130


def main(argv: list[str]) -> int:
    return run_hydra("rpa-bench tune", task, argv, extra_overrides=EXTRA_OVERRIDES, doc=__doc__)
