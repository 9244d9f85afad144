"""Reference scheduler: the simulation's rules, one step at a time, pages by id.

This is the specification the fast simulator (:mod:`.scheduler`) must match exactly; it
is slow (a Python loop over every step and every sequence) and meant for tests on small
traces. Rules of one step (vLLM-v1-like continuous batching):

1. Requests whose ``arrival_s <= t`` join the back of the waiting queue.
2. Running requests that finished their prefill decode first (one token each), in
   admission order; then running requests still in prefill get chunks, in admission
   order; each chunk is ``min(remaining, budget left, chunk_prefill_size)`` tokens.
3. A scheduled sequence must hold ``ceil(kv_len / page_size)`` pages. When the pool
   runs dry, the most recently admitted running request is preempted: its pages are
   freed, it forgets its computed tokens and goes to the front of the waiting queue
   (to recompute prompt + generated tokens later). If it was already scheduled in this
   step, it is taken out again (its tokens return to the budget). If it is the request
   being scheduled, scheduling of running requests stops.
4. If nothing was preempted in this step, waiting requests are admitted from the front
   while budget, ``max_num_seqs`` and pages allow (first-come first-served: the first
   that does not fit stops admission). An admitted request skips its cached prefix
   blocks (prefix caching), always computing at least one token.
5. The step takes the modelled time of its batch; afterwards, a request that has
   computed all its known tokens samples one new token; a prefill completing puts its
   prompt blocks into the prefix cache; a request with all its output tokens finishes.
"""

from __future__ import annotations

import dataclasses
from collections import deque

from rpa_bench.workloads.prefix_cache import PrefixCache
from rpa_bench.workloads.scheduler_spec import SchedulerSpec, check_feasible, pages_for
from rpa_bench.workloads.steptime import StepCostModel, causal_pairs
from rpa_bench.workloads.traces import RequestTable


@dataclasses.dataclass
class RefStep:
    start_s: float
    step_time_s: float
    seqs: list[tuple[int, int, int]]  # (request id, q_len, kv_len) in batch order


@dataclasses.dataclass
class RefResult:
    steps: list[RefStep]
    finish_step: list[int]  # per request
    preempted: list[tuple[int, int]]  # (step being scheduled, request) per preemption
    preemptions: int
    prefix_hit_tokens: int
    end_s: float


def simulate_reference(requests: RequestTable, spec: SchedulerSpec, cost: StepCostModel,
                       *, check_pages: bool = True) -> RefResult:
    check_feasible(spec, requests.prompt_len, requests.output_len)
    n = len(requests)
    arrival = requests.arrival_s.tolist()
    prompt = requests.prompt_len.tolist()
    output = requests.output_len.tolist()
    ps = spec.page_size
    cache = PrefixCache(spec.cache_capacity_blocks, spec.prefix_block_tokens) if spec.prefix_caching else None

    computed = [0] * n
    generated = [0] * n
    prefilling = [True] * n
    pages: list[list[int]] = [[] for _ in range(n)]
    finish_step = [-1] * n
    free_pages = list(range(spec.num_kv_pages - 1, -1, -1))
    waiting: deque[int] = deque()
    running: list[int] = []
    steps: list[RefStep] = []
    t = 0.0
    next_arrival = 0
    done = 0
    preemptions = 0
    hit_tokens = 0
    preempted_log: list[tuple[int, int]] = []

    def grow(rid: int, tokens: int) -> None:
        while len(pages[rid]) < pages_for(tokens, ps):
            pages[rid].append(free_pages.pop())

    def preempt(scheduled: dict[int, int]) -> tuple[int, int]:
        """Preempt the newest running request; (victim, tokens it had scheduled)."""
        nonlocal preemptions
        victim = running.pop()
        preempted_log.append((len(steps), victim))
        free_pages.extend(pages[victim])
        pages[victim] = []
        computed[victim] = 0
        prefilling[victim] = True
        waiting.appendleft(victim)
        preemptions += 1
        return victim, scheduled.pop(victim, 0)

    while done < n:
        while next_arrival < n and arrival[next_arrival] <= t:
            waiting.append(next_arrival)
            next_arrival += 1
        if not running and not waiting:
            t = arrival[next_arrival]
            continue
        budget = spec.max_num_batched_tokens
        scheduled: dict[int, int] = {}  # rid -> new tokens, in scheduling order
        preempted = stop = False
        for phase_prefill in (False, True):
            for rid in [r for r in running if prefilling[r] == phase_prefill]:
                if stop or budget == 0:
                    break
                if rid not in running:
                    continue
                remaining = prompt[rid] + generated[rid] - computed[rid]
                n_new = min(remaining, budget, spec.chunk_cap)
                while len(free_pages) < pages_for(computed[rid] + n_new, ps) - len(pages[rid]):
                    victim, refund = preempt(scheduled)
                    budget += refund
                    preempted = True
                    if victim == rid:
                        stop = True
                        break
                if stop:
                    break
                grow(rid, computed[rid] + n_new)
                scheduled[rid] = n_new
                budget -= n_new
        while not preempted and waiting and budget > 0 and len(running) < spec.max_num_seqs:
            rid = waiting[0]
            total = prompt[rid] + generated[rid]
            cached, blocks = 0, []
            if cache is not None:
                blocks = cache.full_blocks(requests.blocks(rid), prompt[rid])
                hit = cache.lookup(blocks)
                cached = min(hit * cache.block_tokens, total - 1)
                blocks = blocks[:hit]
            remaining = total - cached
            n_new = min(remaining, budget, spec.chunk_cap)
            if not spec.chunked_prefill and n_new < remaining <= spec.max_num_batched_tokens:
                break
            if pages_for(cached + n_new, ps) > len(free_pages):
                break
            waiting.popleft()
            running.append(rid)
            if cache is not None:
                cache.touch(blocks)
            hit_tokens += cached
            computed[rid] = cached
            grow(rid, cached + n_new)
            scheduled[rid] = n_new
            budget -= n_new
        if check_pages:
            held = [p for r in running for p in pages[r]]
            assert len(held) == len(set(held)) and len(held) + len(free_pages) == spec.num_kv_pages
        if not scheduled:
            continue
        seqs = [(rid, q, computed[rid] + q) for rid, q in scheduled.items()]
        num_tokens = sum(q for _, q, _ in seqs)
        sum_kv = sum(kv for _, _, kv in seqs)
        pairs = sum(causal_pairs(q, kv) for _, q, kv in seqs)
        dt = cost.scalar_step_time_s(num_tokens, sum_kv, pairs)
        steps.append(RefStep(t, dt, seqs))
        t = t + dt
        for rid, q, kv in seqs:
            computed[rid] = kv
            if kv == prompt[rid] + generated[rid]:
                generated[rid] += 1
                if prefilling[rid]:
                    prefilling[rid] = False
                    if cache is not None:
                        cache.insert(cache.full_blocks(requests.blocks(rid), prompt[rid]))
                if generated[rid] == output[rid]:
                    running.remove(rid)
                    free_pages.extend(pages[rid])
                    pages[rid] = []
                    finish_step[rid] = len(steps) - 1
                    done += 1
    return RefResult(steps, finish_step, preempted_log, preemptions, hit_tokens, t)
