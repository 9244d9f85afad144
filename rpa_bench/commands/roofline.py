"""``rpa-bench roofline``: bytes, FLOPs, MBU / MFU and the roofline bound of one call.

Examples (the paper's Tables 4 and 6 / 8 rows)::

    rpa-bench roofline --device tpu7x --heads 32/8 --head-dim 128 --page-size 256 \\
        --dtype bfloat16 --convention paper --phase decode --num-seqs 128 --context 8192 \\
        --latency-us 641
    rpa-bench roofline --device tpu7x --heads 32/8 --head-dim 128 --dtype bfloat16 \\
        --convention paper --phase prefill --seq-len 8192 --causal --ckv 1024 --latency-us 852
    rpa-bench roofline --device h100_sxm --batch-spec 2q2k_32q1s1k --latency-us 120 --json

``rpa-bench roofline --paper all`` (or ``--paper table4``) prints the paper's tables
beside their recomputation from the printed latencies, with the TPU7x roofline bound.

``--context`` is the paper's c: tokens already cached *before* the new ones, so a decode
has kv_len = c + 1 and a prefill chunk of s tokens kv_len = c + s. Without
``--latency-us`` only the cost and the roofline bound are printed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import pandas as pd

from rpa_bench.roofline.calibration import resolve_roofline
from rpa_bench.roofline.cost import COUNTS, GRANULARITIES, PAPER_CKV, batch_cost
from rpa_bench.roofline.metrics import CONVENTIONS, PEAK_SOURCES, compute_metrics
from rpa_bench.roofline.paper import PAPER_TABLES, paper_vs_recomputed
from rpa_bench.roofline.specs import device_names
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.model import ModelSpec, SUPPORTED_DTYPES, SUPPORTED_KV_DTYPES
from rpa_bench.workloads.spec import parse_batch_spec

PHASES = ("decode", "prefill", "mixed")


def _heads(text: str) -> tuple[int, int]:
    try:
        q, kv = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--heads={text!r} must be Q/KV query and KV head counts, e.g. 32/8")
    return q, kv


# Bounds far beyond any real batch; they stop a typo from allocating a batch of 10^12
# sequences (a MemoryError) before anything is computed.
MAX_COUNT = 10_000_000


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    if value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"{value} is larger than {MAX_COUNT:,} (allowed: 1 .. {MAX_COUNT:,})")
    return value


def _latency(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of microseconds > 0")
    return value


def _non_negative(text: str) -> int:
    value = int(text) if text.lstrip("-").isdigit() else None
    if value is None or value < 0 or value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer in 0 .. {MAX_COUNT:,}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rpa-bench roofline", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto",
                   help=f"device spec: auto (detect) or one of {', '.join(device_names())}")
    p.add_argument("--num-devices", type=_positive, default=None,
                   help="JAX devices the call ran on (default: the whole chip, e.g. 2 for tpu7x)")
    p.add_argument("--heads", type=_heads, default=(32, 8), help="query/KV heads, e.g. 32/8 (default)")
    p.add_argument("--head-dim", type=_positive, default=128)
    p.add_argument("--page-size", type=_positive, default=256)
    p.add_argument("--dtype", choices=SUPPORTED_DTYPES, default="bfloat16", help="query/output dtype")
    p.add_argument("--kv-dtype", choices=SUPPORTED_KV_DTYPES, default=None, help="KV cache dtype (default: --dtype)")
    p.add_argument("--convention", choices=CONVENTIONS, default="paper")
    p.add_argument("--peak-source", choices=PEAK_SOURCES, default="datasheet")
    p.add_argument("--results-dir", default="results", help="where calibrations are looked up")
    w = p.add_argument_group("workload (either --batch-spec or --phase with sizes)")
    w.add_argument("--batch-spec", default=None, help="ragged batch, e.g. 2q2k_32q1s1k (see workloads.spec)")
    w.add_argument("--phase", choices=PHASES, default=None)
    w.add_argument("--num-seqs", type=_positive, default=None, help="decode: number of sequences")
    w.add_argument("--context", type=_non_negative, default=None,
                   help="tokens cached before the new ones (paper's c; decode kv_len = c + 1)")
    w.add_argument("--seq-len", type=_positive, default=None, help="prefill: new tokens of the one sequence")
    w.add_argument("--causal", action=argparse.BooleanOptionalAction, default=None,
                   help="causal mask (default: on, except --phase prefill --seq-len as in the paper's Table 6)")
    w.add_argument("--ckv", type=_positive, default=PAPER_CKV,
                   help=f"KV compute block for executed causal FLOPs (default {PAPER_CKV}; 1 = token-exact)")
    w.add_argument("--count", choices=COUNTS, default="executed", help="causal FLOPs: as executed or useful only")
    w.add_argument("--sliding-window", type=_positive, default=None)
    w.add_argument("--granularity", choices=GRANULARITIES, default="token", help="cached K/V bytes per token or page")
    p.add_argument("--latency-us", type=_latency, default=None, help="measured latency of the call (microseconds)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--paper", choices=(*PAPER_TABLES, "all"), default=None,
                   help="print a paper table (or all) beside its recomputation; other flags ignored")
    return p


def _batch(args, parser) -> tuple[RaggedBatch, bool]:
    """The batch and the causal default it implies."""
    if args.batch_spec:
        if args.num_seqs or args.seq_len or args.context is not None:
            parser.error("--batch-spec excludes --num-seqs, --seq-len and --context")

        try:
            return parse_batch_spec(args.batch_spec, page_size=args.page_size), True
        except ValueError as e:
            parser.error(f"--batch-spec: {e}")
    if args.phase == "decode":
        if args.num_seqs is None or args.context is None:
            parser.error("--phase decode needs --num-seqs and --context")
        n, kv = args.num_seqs, args.context + 1
        return RaggedBatch((1,) * n, (kv,) * n, page_size=args.page_size), True
    if args.phase == "prefill":
        if args.seq_len is None:
            parser.error("--phase prefill needs --seq-len (and optionally --context)")
        s = args.seq_len
        return RaggedBatch((s,), ((args.context or 0) + s,), page_size=args.page_size), False
    if args.phase == "mixed":
        parser.error("--phase mixed needs --batch-spec (e.g. 2q2k_32q1s1k)")
    parser.error("give --batch-spec or --phase {decode,prefill} with sizes")
    raise AssertionError


def _fmt(x, spec: str = ".2f", unit: str = "") -> str:
    return "n/a" if x is None else f"{x:{spec}}{unit}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.paper:
        return _print_paper(args.paper, as_json=args.json)
    if args.latency_us is not None and not args.latency_us > 0:
        parser.error(f"--latency-us={args.latency_us} must be > 0")
    try:
        roof = resolve_roofline(args.device, results_dir=args.results_dir)
        device = roof.device
    except ValueError as e:
        parser.error(f"--device: {e}")
    if args.num_devices:
        device = device.for_devices(args.num_devices)
    batch, causal_default = _batch(args, parser)
    if args.phase and args.batch_spec and args.phase != batch.phase:
        parser.error(f"--phase={args.phase} contradicts --batch-spec (a {batch.phase} batch)")
    causal = causal_default if args.causal is None else args.causal
    try:
        model = ModelSpec("cli", num_q_heads=args.heads[0], num_kv_heads=args.heads[1], head_dim=args.head_dim,
                          dtype=args.dtype, kv_dtype=args.kv_dtype or args.dtype)
        cost = batch_cost(batch, model, causal=causal, sliding_window=args.sliding_window, ckv=args.ckv,
                          count=args.count, granularity=args.granularity)
        latency = args.latency_us
        if latency is None:  # cost and bound only: evaluate at the bound itself
            probe = compute_metrics(cost, 1.0, device, convention=args.convention, peak_source=args.peak_source,
                                    calibration=roof.calibration)
            latency = probe.bound_time_us
        m = compute_metrics(cost, latency, device, convention=args.convention, peak_source=args.peak_source,
                            calibration=roof.calibration)
    except ValueError as e:
        parser.error(str(e))
    out = m.to_dict()
    if args.latency_us is None:
        for key in ("latency_us", "throughput_gib_per_s", "throughput_gb_per_s", "tflops", "mbu_pct", "mfu_pct",
                    "roofline_efficiency_pct", "memory_roof_pct", "compute_roof_pct"):
            out[key] = None
        out.update(above_roof=False, above_roof_reason=None)
    out.update(cost=cost.to_dict(), batch_spec=args.batch_spec, context=args.context, causal=causal,
               device_spec=device.to_dict())
    if args.json:
        print(json.dumps(out, sort_keys=True))
        return 0
    _print_text(out, batch, device, cost)
    return 0


def _print_text(out: dict, batch: RaggedBatch, device, cost) -> None:
    conv = out["convention"]
    cap = out["max_mxu_utilization"]
    w = sys.stdout.write
    w(f"device       {device.name} x{device.num_devices} JAX device(s): HBM {device.hbm_bw_bytes_per_s / 1e9:.4g} GB/s, "
      f"{out['peak_flops_dtype']} {out['peak_flops_per_s'] / 1e12:.4g} TFLOP/s, MXU cap {cap:.0%} "
      f"({out['peak_source']})\n")
    w(f"workload     {batch.phase}: {batch.num_seqs} seq(s), {batch.num_tokens} new tokens, "
      f"max kv_len {batch.max_kv_len}, page {batch.page_size}\n")
    w(f"hbm_bytes    {cost.hbm_bytes:,} (+{cost.metadata_bytes:,} metadata, not counted)\n")
    w(f"flops        {cost.flops:,} ({cost.flops_kind}"
      + (f", ckv {cost.ckv}" if cost.causal and cost.count == "executed" else "") + ")\n")
    w(f"bound        {out['bound_time_us']:.1f} us ({out['bound_by']}-bound; memory {out['memory_time_us']:.1f} us, "
      f"compute {out['compute_time_us']:.1f} us)\n")
    if out["latency_us"] is None:
        return
    w(f"latency      {out['latency_us']:g} us\n")
    w(f"throughput   {out['throughput_gib_per_s']:.0f} GiB/s ({out['throughput_gb_per_s']:.0f} GB/s)\n")
    w(f"TFLOP/s      {out['tflops']:.1f}\n")
    w(f"MBU          {_fmt(out['mbu_pct'], '.2f', ' %')} ({conv} convention)\n")
    w(f"MFU          {_fmt(out['mfu_pct'], '.2f', ' %')} ({conv} convention)\n")
    w(f"efficiency   {out['roofline_efficiency_pct']:.1f} % of the roofline bound\n")
    if out["above_roof"]:
        w(f"ABOVE ROOF   {out['above_roof_reason']} -- a measurement or accounting error\n")


PAPER_COLUMNS = ("table", "sweep_value", "variant", "latency_us", "throughput_printed", "throughput",
                 "util_printed_pct", "util_pct", "within_rounding", "bound_time_us", "roofline_efficiency_pct")


# Ablation variants whose utilisation has no meaning as a fraction of the peak: the paper's
# "w/o flash attention" latency no longer includes the attention computation, so the
# attention's FLOPs over it exceed the peak (Table 12: 810% and 972%).
MEANINGLESS_UTIL = {"wo_flash_attention": "the ablation leaves out the attention computation itself, so the "
                                          "attention's FLOPs (or bytes) over its latency are not a utilisation "
                                          "(MFU up to 972%)"}
TABLE_CAPTIONS = {
    "table4": "Table 4: decode, 128 sequences x context c (MBU)",
    "table6": "Table 6: prefill, non-causal, one sequence of s tokens (MFU)",
    "table8": "Table 8: prefill, causal, one sequence of s tokens (MFU)",
    "table10": "Table 10: decode ablations (incl/excl prep, w/o KV update, w/o flash attention, w/o DMA)",
    "table11": "Table 11: non-causal prefill ablations",
    "table12": "Table 12: causal prefill ablations",
}


def _print_paper(which: str, *, as_json: bool) -> int:
    df = paper_vs_recomputed(tuple(PAPER_TABLES) if which == "all" else (which,))
    df = df.assign(note=["not a utilisation (*)" if v in MEANINGLESS_UTIL else "" for v in df["variant"]])
    checked = df[df["within_rounding"].notna()]
    reproduced = int(checked["within_rounding"].astype(bool).sum())
    if as_json:
        print(json.dumps({"convention": "paper", "device": "tpu7x", "reproduced": reproduced,
                          "checked": len(checked), "rows": json.loads(df.to_json(orient="records"))}))
        return 0
    print("Paper convention, TPU7x chip; each value recomputed from the paper's latency (rounded to 1 us).")
    for name, t in df.groupby("table", sort=False):
        unit = t["throughput_unit"].iloc[0]
        util = "MBU %" if t["util_name"].iloc[0] == "mbu_pct" else "MFU %"
        sweep = "c" if t["phase"].iloc[0] == "decode" else "s"
        shown = t[["sweep_value", "variant", "latency_us", "throughput_printed", "throughput", "util_printed_pct",
                   "util_pct", "within_rounding", "bound_time_us", "roofline_efficiency_pct", "note"]].rename(
            columns={"sweep_value": sweep, "latency_us": "latency us", "throughput_printed": f"paper {unit}",
                     "throughput": f"{unit}", "util_printed_pct": f"paper {util}", "util_pct": util,
                     "within_rounding": "reproduced", "bound_time_us": "bound us",
                     "roofline_efficiency_pct": "bound/latency %"})
        if not shown["note"].astype(bool).any():
            shown = shown.drop(columns=["note"])
        for col in (f"paper {unit}", f"paper {util}"):
            shown[col] = pd.to_numeric(shown[col], errors="coerce")
        shown["reproduced"] = [("yes" if v else "NO") if v is not None and v == v else "-" for v in shown["reproduced"]]
        ok = t["within_rounding"].dropna()
        print(f"\n== {TABLE_CAPTIONS.get(name, name)}"
              + (f": {int(ok.astype(bool).sum())}/{len(ok)} reproduced" if len(ok) else ": ablation (nothing printed to check)"))
        print(shown.to_string(index=False, float_format=lambda x: f"{x:.2f}", na_rep="-"))
        if t["note"].astype(bool).any():
            print(f"(*) wo_flash_attention: {MEANINGLESS_UTIL['wo_flash_attention']}.")
    print(f"\nreproduced: {reproduced}/{len(checked)} printed values within the latency's rounding")
    return 0
