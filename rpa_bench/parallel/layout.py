"""Per-device kernel inputs of a sharded call, and its outputs back in unsharded layout.

Built from the *unsharded* canonical inputs, so both runs see the same numbers:
- every array gets a leading device axis of size ``mesh.data``: device ``d`` holds its
  own sub-batch (:class:`~rpa_bench.parallel.partition.DataPartition`) padded to common
  per-device sizes, with its own ``kv_lens``, ``cu_q_lens``, page table and cache shard
  (the pages of its sequences, copied from the unsharded cache, in a shuffled order);
- the heads axes of queries, new K/V and caches are split over ``model`` (each device
  gets ``h_kv / model`` KV heads and their ``h_q / model`` query heads, contiguous, so
  GQA groups stay whole); metadata is replicated over ``model``.

:func:`gather_output` puts per-device results back into the unsharded canonical layout
(rows at their unsharded rows, pages at their unsharded page ids), so a sharded run
compares element by element with the unsharded one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rpa_bench.kernels.base import KernelOutput
from rpa_bench.parallel.mesh import DATA, MODEL, MeshSpec
from rpa_bench.parallel.partition import DataPartition, partition_batch, roofline_seq_time_s
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.materialize import KernelInputs, poison_value
from rpa_bench.workloads.model import ModelSpec

ARRAY_FIELDS = (
    "queries", "new_keys", "new_values", "k_cache", "v_cache",
    "kv_lens", "page_indices", "cu_q_lens", "num_seqs", "distribution",
)
# Global (stacked) layout of each field: leading device axis over data, heads over model.
FIELD_SPECS = {
    "queries": P(DATA, None, MODEL, None),  # [D, T_loc, h_q, d]
    "new_keys": P(DATA, None, MODEL, None),  # [D, T_loc, h_kv, d]
    "new_values": P(DATA, None, MODEL, None),
    "k_cache": P(DATA, None, None, MODEL, None),  # [D, P_loc, page_size, h_kv, d]
    "v_cache": P(DATA, None, None, MODEL, None),
    "kv_lens": P(DATA, None),  # i32[D, S_loc]
    "page_indices": P(DATA, None, None),  # i32[D, S_loc, pages_per_seq]
    "cu_q_lens": P(DATA, None),  # i32[D, S_loc + 1]
    "num_seqs": P(DATA, None),  # i32[D, 1]
    "distribution": P(DATA, None),  # i32[D, 3]
}


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """How one batch is laid out on a mesh: the split and the common per-device shape."""

    mesh: MeshSpec
    model: ModelSpec  # the whole model
    local_model: ModelSpec  # what one device sees
    partition: DataPartition
    max_num_batched_tokens: int  # T_loc: query rows per device
    max_num_seqs: int  # S_loc: sequence slots per device
    pages_per_seq: int  # page-table width
    num_pages: int  # P_loc: pages of each device's cache shard

    def __post_init__(self) -> None:
        if self.partition.num_parts != self.mesh.data:
            raise ValueError(
                f"partition has {self.partition.num_parts} parts but mesh.data={self.mesh.data}"
            )
        for field, need in (
            ("max_num_batched_tokens", max(self.partition.tokens_per_part)),
            ("max_num_seqs", max(self.partition.seqs_per_part)),
            ("pages_per_seq", max(self.batch.pages_per_seq)),
            ("num_pages", max(self.partition.pages_per_part) + 1),
        ):
            if getattr(self, field) < need:
                raise ValueError(f"per-device {field}={getattr(self, field)} is too small: the split needs >= {need}")

    @property
    def batch(self) -> RaggedBatch:
        return self.partition.batch

    @property
    def build_batch(self) -> RaggedBatch:
        """The batch handed to ``backend.build``: the busiest device's sub-batch (shapes come
        from the padded sizes; every device runs the same program on its own metadata)."""
        times = self.partition.part_time_s
        order = sorted(range(len(times)), key=lambda p: (-times[p], p))
        for p in order:
            sub = self.partition.sub_batch(p)
            if sub is not None:
                return sub
        raise AssertionError("a partition of a non-empty batch has a non-empty part")


def plan_sharding(partition: DataPartition, model: ModelSpec, mesh: MeshSpec, *,
                  max_num_batched_tokens: int | None = None, max_num_seqs: int | None = None,
                  pages_per_seq: int | None = None, num_pages: int | None = None) -> ShardPlan:
    """Per-device padded sizes: exact needs by default (one spare, poisoned page per device)."""
    local = mesh.local_model(model)
    batch = partition.batch
    return ShardPlan(
        mesh=mesh, model=model, local_model=local, partition=partition,
        max_num_batched_tokens=max_num_batched_tokens or max(partition.tokens_per_part),
        max_num_seqs=max_num_seqs or max(1, max(partition.seqs_per_part)),
        pages_per_seq=pages_per_seq or max(batch.pages_per_seq),
        num_pages=num_pages or max(partition.pages_per_part) + 1,
    )


@dataclasses.dataclass
class ShardedInputs:
    """Kernel inputs of every device, as global arrays sharded over the mesh."""

    plan: ShardPlan
    queries: Any  # [D, T_loc, h_q, d] model.dtype
    new_keys: Any  # [D, T_loc, h_kv, d] model.kv_dtype
    new_values: Any  # [D, T_loc, h_kv, d]
    k_cache: Any  # [D, P_loc, page_size, h_kv, d]
    v_cache: Any  # [D, P_loc, page_size, h_kv, d]
    kv_lens: Any  # i32[D, S_loc]
    page_indices: Any  # i32[D, S_loc, pages_per_seq]
    cu_q_lens: Any  # i32[D, S_loc + 1]
    num_seqs: Any  # i32[D, 1]
    distribution: Any  # i32[D, 3]
    token_rows: tuple[np.ndarray, ...]  # per data index: unsharded rows of its local rows
    page_map: np.ndarray  # i64[D, P_loc]: unsharded page of each local page, -1 for none
    global_num_tokens: int  # T_pad of the unsharded inputs
    global_num_pages: int  # pages of the unsharded cache

    def arrays(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in ARRAY_FIELDS}

    def copy(self) -> "ShardedInputs":
        """Fresh device copies (for kernels that donate their inputs)."""
        return dataclasses.replace(self, **{k: jnp.copy(v) for k, v in self.arrays().items()})



def _poison_or_zero(dtype, poison: bool):
    if not poison:
        return np.zeros((), dtype)
    try:
        return np.asarray(poison_value(dtype))
    except ValueError:
        return np.zeros((), dtype)


def _global_array(host: np.ndarray, mesh, spec: P):
    """A global array from a host copy every process holds (works across hosts)."""
    sharding = NamedSharding(mesh, spec)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def shard_inputs(inputs: KernelInputs, plan: ShardPlan, mesh, *, seed: int = 0, poison: bool = True) -> ShardedInputs:
    """Split unsharded canonical ``inputs`` over ``mesh`` following ``plan``.

    Each device's cache shard holds copies of its sequences' pages (new page ids,
    shuffled from ``seed + data index``); unused pages and padding rows are poisoned.
    """
    if inputs.batch != plan.batch:
        raise ValueError("inputs.batch differs from the plan's batch: plan the split for these inputs")
    if inputs.model != plan.model:
        raise ValueError(f"inputs.model={inputs.model.name!r} differs from the plan's model={plan.model.name!r}")
    if tuple(mesh.axis_names) != (DATA, MODEL) or tuple(mesh.devices.shape) != plan.mesh.shape:
        raise ValueError(f"mesh {dict(mesh.shape)} does not match the plan's {plan.mesh.label}")
    batch, part = plan.batch, plan.partition
    d_n, t_loc, s_loc, pps, p_loc = (plan.mesh.data, plan.max_num_batched_tokens, plan.max_num_seqs,
                                     plan.pages_per_seq, plan.num_pages)
    host = {k: np.asarray(v) for k, v in inputs.arrays().items()}
    q, nk, nv, kc, vc = (host[k] for k in ("queries", "new_keys", "new_values", "k_cache", "v_cache"))
    gtable = host["page_indices"]
    out = {
        "queries": np.broadcast_to(_poison_or_zero(q.dtype, poison), (d_n, t_loc, *q.shape[1:])).copy(),
        "new_keys": np.broadcast_to(_poison_or_zero(nk.dtype, poison), (d_n, t_loc, *nk.shape[1:])).copy(),
        "new_values": np.broadcast_to(_poison_or_zero(nv.dtype, poison), (d_n, t_loc, *nv.shape[1:])).copy(),
        "k_cache": np.broadcast_to(_poison_or_zero(kc.dtype, poison), (d_n, p_loc, *kc.shape[1:])).copy(),
        "v_cache": np.broadcast_to(_poison_or_zero(vc.dtype, poison), (d_n, p_loc, *vc.shape[1:])).copy(),
        "kv_lens": np.zeros((d_n, s_loc), np.int32),
        "page_indices": np.zeros((d_n, s_loc, pps), np.int32),
        "cu_q_lens": np.zeros((d_n, s_loc + 1), np.int32),
        "num_seqs": np.zeros((d_n, 1), np.int32),
        "distribution": np.zeros((d_n, 3), np.int32),
    }
    page_map = np.full((d_n, p_loc), -1, np.int64)
    token_rows = []
    pages_of = batch.pages_per_seq
    for d in range(d_n):
        rows = part.token_rows(d)
        token_rows.append(rows)
        for name, src in (("queries", q), ("new_keys", nk), ("new_values", nv)):
            out[name][d, : len(rows)] = src[rows]
        ids = part.seq_ids[d]
        perm = np.random.default_rng(seed + d).permutation(p_loc)
        used = part.pages_per_part[d]
        out["page_indices"][d] = perm[used]  # padding entries: the spare, poisoned page
        k = 0
        for j, s in enumerate(ids):
            n = pages_of[s]
            local_pages = perm[k : k + n]
            global_pages = gtable[s, :n]
            out["page_indices"][d, j, :n] = local_pages
            out["k_cache"][d, local_pages] = kc[global_pages]
            out["v_cache"][d, local_pages] = vc[global_pages]
            page_map[d, local_pages] = global_pages
            k += n
        q_lens = [batch.q_lens[s] for s in ids]
        out["kv_lens"][d, : len(ids)] = [batch.kv_lens[s] for s in ids]
        cu = np.concatenate([[0], np.cumsum(q_lens, dtype=np.int64)]).astype(np.int32)
        out["cu_q_lens"][d] = np.concatenate([cu, np.full(s_loc - len(ids), cu[-1], np.int32)])
        out["num_seqs"][d] = len(ids)
        sub = part.sub_batch(d)
        out["distribution"][d] = sub.distribution if sub is not None else (0, 0, 0)
    arrays = {k: _global_array(v, mesh, FIELD_SPECS[k]) for k, v in out.items()}
    return ShardedInputs(
        plan=plan, **arrays, token_rows=tuple(token_rows), page_map=page_map,
        global_num_tokens=int(q.shape[0]), global_num_pages=int(kc.shape[0]),
    )


def gather_output(stacked: KernelOutput, inputs: ShardedInputs) -> KernelOutput:
    """Per-device outputs back in the unsharded canonical layout.

    output [T_pad, h_q, d]: each device's rows at their unsharded rows (padding rows 0);
    caches [num_pages, page_size, h_kv, d]: each local page at its unsharded page id,
    pages no device held poisoned (NaN) as in the unsharded inputs.
    """
    out = np.asarray(stacked.output)
    t_glob = inputs.global_num_tokens
    output = np.zeros((t_glob, *out.shape[2:]), out.dtype)
    for d, rows in enumerate(inputs.token_rows):
        output[rows] = out[d, : len(rows)]
    caches = {}
    for name in ("k_cache", "v_cache"):
        local = getattr(stacked, name)
        if local is None:
            caches[name] = None
            continue
        local = np.asarray(local)
        full = np.broadcast_to(_poison_or_zero(local.dtype, True),
                               (inputs.global_num_pages, *local.shape[2:])).copy()
        for d in range(local.shape[0]):
            mine = inputs.page_map[d] >= 0
            full[inputs.page_map[d][mine]] = local[d][mine]
        caches[name] = full
    return KernelOutput(output=output, **caches)


def plan_for(batch: RaggedBatch, model: ModelSpec, attn, mesh: MeshSpec, device_spec, *, ckv: int | None = None,
             **sizes: int | None) -> ShardPlan:
    """Split ``batch`` over ``mesh`` balanced by each sequence's roofline time on one device
    of ``device_spec``, then fix the common per-device sizes (``sizes``: see plan_sharding)."""

    times = roofline_seq_time_s(batch, mesh.local_model(model), attn, device_spec, ckv=ckv)
    return plan_sharding(partition_batch(batch, mesh.data, seq_time_s=times), model, mesh, **sizes)
