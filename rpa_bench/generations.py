"""The TPU generations the suite knows: one table (pure data, no JAX).

Every place that names a generation reads it from here: the offline compile targets
(:mod:`rpa_bench.kernels.compiling`), the kernels' build-for-a-generation
(:mod:`rpa_bench.kernels.tpu_target`), the roofline's cross-check against JAX's figures
(:mod:`rpa_bench.roofline.jax_tpu_table`) and the config checks (``run.compile_only``,
``tune.generation``, ``compile.generations``).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Generation:
    device_kind: str  # as jax.Device.device_kind spells it
    alias: str  # the short name users type (tpu7x, v6e, ...)
    topology: str  # jax.experimental.topologies name of one chip
    spec_name: str  # the roofline DeviceSpec name (conf/device)
    jax_chip_version: str  # jax._src.tpu_info.ChipVersion value
    compile_only: bool  # libtpu's compile-only client compiles for it here
    upstream_name: str  # as tpu-inference's get_device_name() spells it (the key of its tuned tables)
    extra_aliases: tuple[str, ...] = ()


GENERATIONS: tuple[Generation, ...] = (
    Generation("TPU v5 lite", "v5e", "v5e:1x1", "tpu_v5e", "v5e", True, "TPU v5e", ("v5litepod",)),
    Generation("TPU v6 lite", "v6e", "v6e:1x1", "tpu_v6e", "v6e", True, "TPU v6e"),
    Generation("TPU v5p", "v5p", "v5p:1x1x1", "tpu_v5p", "v5p", True, "TPU v5p"),
    # libtpu 0.0.48 refuses to compile for v4 ("Unsupported tpu_version"): known, not offered
    Generation("TPU v4", "v4", "v4:1x1x1", "tpu_v4", "v4", False, "TPU v4"),
    Generation("TPU7x", "tpu7x", "tpu7x:1x1x1", "tpu7x", "7x", True, "TPU v7"),
)
BY_KIND = {g.device_kind: g for g in GENERATIONS}
ALIASES = {a: g.device_kind for g in GENERATIONS for a in (g.alias, *g.extra_aliases)}
COMPILABLE = tuple(g.alias for g in GENERATIONS if g.compile_only)


def generation_kind(name: str, *, compilable: bool = False) -> str:
    """``tpu7x`` / ``v6e`` / ``TPU v6 lite`` -> the device kind; ValueError naming the allowed
    values. ``compilable``: only generations the compile-only client compiles for here."""
    kind = name if name in BY_KIND else ALIASES.get(str(name).strip().lower())
    allowed = COMPILABLE if compilable else tuple(ALIASES)
    if kind is None or (compilable and not BY_KIND[kind].compile_only):
        why = ("cannot be compiled here (libtpu's compile-only client does not compile for it)"
               if kind is not None else "unknown")
        raise ValueError(f"generation={name!r} {why}; allowed: {', '.join(allowed)}")
    return kind


def generation_kinds(names, *, compilable: bool = False) -> tuple[str, ...]:
    """Several names, normalised and without repeats (``[tpu7x, TPU7x]`` is one generation)."""
    return tuple(dict.fromkeys(generation_kind(str(n), compilable=compilable) for n in names))
