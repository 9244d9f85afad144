"""Multi-device runs: one kernel call sharded over a ``data`` x ``model`` device mesh.

- :mod:`.mesh`: the mesh shape as data (:class:`MeshSpec`), its default per device kind,
  concrete and abstract (cross-lowering) JAX meshes, device descriptions;
- :mod:`.partition`: sequences split across the ``data`` axis, balanced by roofline time;
- :mod:`.layout`: per-device inputs stacked along a device axis (heads split over
  ``model``), and results gathered back into the unsharded canonical layout;
- :mod:`.sharded`: any registered backend's stages run under ``jax.shard_map``;
- :mod:`.backend`: :class:`ShardedBackend`, the same as an ordinary backend to callers;
- :mod:`.lowering`: the sharded program lowered for a TPU slice from an abstract mesh;
- per-device times from one profiler capture live in measure/devtime.py;
- :mod:`.accounting`: bytes / FLOPs / times per device and per chip, MBU / MFU against
  the peaks of the devices used, load imbalance;
- :mod:`.distributed`: ``jax.distributed`` initialisation for multi-host slices, the one
  writer, per-device times gathered across hosts.
"""
