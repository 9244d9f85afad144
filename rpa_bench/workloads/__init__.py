"""rpa_bench.workloads: the ragged batches the kernels see, and where they come from.

- :mod:`.batch` / :mod:`.model`: a batch (q_len, kv_len per sequence, page size, v3 classes)
  and the model's attention shape (plus the whole-model figures of the step-time model).
- :mod:`.spec`: batch-spec strings (``128q1s32k``, ``2q2k_32q1s1k``) both ways.
- :mod:`.synthetic`: the paper's sweeps and seeded random batches.
- :mod:`.traces`: CSV / JSONL trace readers (shipped traces under ``rpa_bench/data/traces``).
- :mod:`.scheduler` (fast) and :mod:`.scheduler_ref` (reference): continuous batching of
  requests into per-step batches; :mod:`.steptime` times the steps; :mod:`.stream` holds
  the result; :mod:`.summary` and :mod:`.sampling` describe it (plots: :mod:`rpa_bench.reports.shape_plot`).
- :mod:`.points`: ``build_workload`` -- the points (batch, weight, padding) a run measures.
- :mod:`.materialize`: a batch as kernel input arrays.
"""
