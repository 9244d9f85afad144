"""A run from plan to stored rows.

``plan`` (typed, everything refused before work) -> ``prepare`` (workloads built, backends
resolved and validated) -> ``execute`` (each point materialised once, each kernel job
measured by ``point``) -> the run store (``run_folder``: manifest, resume). Beside the run:
``compile_only`` (a run compiled for a TPU it does not have), the tuner (``tune_space``,
``tuner``) and revision history (``history``). Commands parse, call these and print.
"""
