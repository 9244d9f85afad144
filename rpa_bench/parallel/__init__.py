"""Multi-device runs: one kernel call sharded over a ``data`` x ``model`` device mesh.

- :mod:`.mesh`: the mesh shape as data (:class:`MeshSpec`), its default per device kind,
  concrete and abstract (cross-lowering) JAX meshes, device descriptions;
- :mod:`.partition`: sequences split across the ``data`` axis, balanced by roofline time;
- :mod:`.sharded`: per-device kernel inputs stacked along a device axis, any registered
  backend run under ``jax.shard_map``, results gathered back into canonical order;
- :mod:`.accounting`: bytes / FLOPs / times per device and per chip, MBU / MFU against
  the peaks of the devices used, load imbalance;
- :mod:`.distributed`: ``jax.distributed`` initialisation for multi-host slices.
"""
