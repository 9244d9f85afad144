"""Fast continuous-batching simulation: the reference rules, jumping over decode stretches.

Same rules and results as :func:`.scheduler_ref.simulate_reference` (tests check them
step by step, times to the bit), built for traces of hundreds of thousands of steps:

- Running decodes are kept implicitly: a decode's context grows by one per step, so it
  is stored as ``offset = computed - step`` and its per-step values follow from the
  step index. Per-step sums over decodes come from aggregates (count, sum and max of
  offsets), page needs from a count of decodes per page phase (a decode needs a new
  page at the steps where ``(offset + step) % page_size == 0``).
- Between events the batch is decode-only with fixed membership. Such a stretch ends
  with the next completion, before the first step whose page need exceeds the free
  pool, or (when a newcomer could be admitted) before the first step that starts at or
  after the next arrival. The stretch is costed with array arithmetic in the same
  floating-point order as single steps, and recorded as one segment.
- The output is compact but complete (:class:`.stream.SimulationResult`): per-step
  summaries as run-length segments, decode lifetimes as intervals, prefill/mixed chunks
  as rows; any step's full batch is rebuilt from them.
"""

from __future__ import annotations

import heapq
from collections import deque

import numpy as np

from rpa_bench.workloads.prefix_cache import PrefixCache
from rpa_bench.workloads.scheduler_spec import SchedulerSpec, check_feasible
from rpa_bench.workloads.steptime import StepCostModel
from rpa_bench.workloads.stream import SimulationResult

MIN_JUMP = 3  # shorter decode stretches are stepped one by one (same result, less overhead)


def simulate(requests, spec: SchedulerSpec, cost: StepCostModel) -> SimulationResult:
    """Simulate ``requests`` (a :class:`.traces.RequestTable`) under ``spec``."""
    check_feasible(spec, requests.prompt_len, requests.output_len)
    n = len(requests)
    arrival = requests.arrival_s.tolist()
    prompt = requests.prompt_len.tolist()
    output = requests.output_len.tolist()
    ps = spec.page_size
    budget_max = spec.max_num_batched_tokens
    max_seqs = spec.max_num_seqs
    cap = spec.chunk_cap
    chunked = spec.chunked_prefill
    chunk_size = spec.chunk_prefill_size or 0
    cache = PrefixCache(spec.cache_capacity_blocks, spec.prefix_block_tokens) if spec.prefix_caching else None
    block_of = requests.blocks
    # step-time coefficients, used in the exact order of StepCostModel.step_time_s
    W, QB, BW = cost.model_weight_bytes, cost.q_bytes_per_token, cost.hbm_bw_bytes_per_s
    KVS, SPP, OVH = cost.kv_s_per_token, cost.s_per_pair, cost.overhead_s
    FTS = cost.model_flops_per_token / cost.peak_flops_per_s
    ar = np.arange(1024, dtype=np.float64)
    buf = np.empty(1025, np.float64)  # [t, step times...] of a stretch
    starts = np.empty(1025, np.float64)  # its step start times

    computed = [0] * n
    generated = [0] * n
    held = [0] * n  # pages of a request not decoding (decodes: ceil(computed / ps))
    adm = [-1] * n  # admission sequence number of the current admission
    is_running = [False] * n
    finish_step = [-1] * n
    life = [0] * n  # bumps when a decode leaves, invalidating its heap entry
    dec_off: dict[int, int] = {}  # decoding request -> computed - step
    dec_start: dict[int, int] = {}  # decoding request -> its first decode step
    cnt = [0] * ps  # decodes per page phase
    heap: list[tuple[int, int, int]] = []  # (finish step, life, request)
    prefilling: list[int] = []  # running, not decoding, admission order
    running: list[int] = []  # admission order
    waiting: deque[int] = deque()
    st = {"n_dec": 0, "sum_off": 0, "free": spec.num_kv_pages, "preemptions": 0, "done": 0}
    max_off: int | None = None  # max(dec_off.values()); None: recompute
    t = 0.0
    G = 0
    next_arrival = 0
    admissions = 0
    hit_tokens = 0
    segments: list[tuple] = []  # SEGMENT_COLUMNS
    intervals: list[tuple] = []  # DECODE_COLUMNS
    chunk_rows: list[tuple] = []  # CHUNK_COLUMNS
    add_segment, add_interval, add_chunk = segments.append, intervals.append, chunk_rows.append

    def end_decode(r: int, end: int) -> int:
        """Take ``r`` out of the decode set (its interval ends before step ``end``)."""
        nonlocal max_off
        off = dec_off.pop(r)
        cnt[-off % ps] -= 1
        st["n_dec"] -= 1
        st["sum_off"] -= off
        if off == max_off:
            max_off = None
        life[r] += 1
        add_interval((r, adm[r], dec_start.pop(r), end, off))
        return off

    def finish_decodes(step: int) -> None:
        """Finish every decode whose last token came out of ``step``."""
        while heap and heap[0][0] <= step:
            _, lf, r = heapq.heappop(heap)
            if lf != life[r]:
                continue
            end_decode(r, step + 1)
            running.remove(r)
            is_running[r] = False
            st["free"] += -(-(prompt[r] + output[r] - 1) // ps)
            finish_step[r] = step
            st["done"] += 1

    def preempt(decodes_scheduled: int) -> tuple[int, int]:
        """Preempt the newest running request; (victim, tokens returned to the budget)."""
        victim = running.pop()
        is_running[victim] = False
        refund = 0
        if victim in dec_off:
            c = end_decode(victim, G) + G
            generated[victim] = c - prompt[victim] + 1
            st["free"] += -(-(c + decodes_scheduled) // ps)
            refund = decodes_scheduled
        else:
            prefilling.remove(victim)
            st["free"] += held[victim]
            held[victim] = 0
        computed[victim] = 0
        waiting.appendleft(victim)
        st["preemptions"] += 1
        return victim, refund

    def head_cached(r: int) -> tuple[int, list[int]]:
        """(cached tokens, hit blocks) for admitting ``r`` now."""
        if cache is None:
            return 0, []
        blocks = cache.full_blocks(block_of(r), prompt[r])
        hit = cache.lookup(blocks)
        return min(hit * cache.block_tokens, prompt[r] + generated[r] - 1), blocks[:hit]

    while st["done"] < n:
        while next_arrival < n and arrival[next_arrival] <= t:
            waiting.append(next_arrival)
            next_arrival += 1
        if not running and not waiting:
            t = arrival[next_arrival]
            continue
        n_dec = st["n_dec"]
        free = st["free"]

        # --- a decode-only stretch: many steps at once ---------------------------------
        if n_dec and not prefilling and cnt[G % ps] <= free:
            arrivals_matter = False
            blocked = True
            if len(running) < max_seqs and budget_max > n_dec:
                if waiting:
                    head = waiting[0]
                    cached, _ = head_cached(head)
                    remaining = prompt[head] + generated[head] - cached
                    n_new = min(remaining, budget_max - n_dec, cap)
                    fits = chunked or n_new == remaining or remaining > budget_max
                    blocked = not fits or -(-(cached + n_new) // ps) > free - cnt[G % ps]
                else:
                    arrivals_matter = next_arrival < n
            while heap[0][1] != life[heap[0][2]]:
                heapq.heappop(heap)
            kcap = heap[0][0] - G + 1  # up to and including the next completion step
            if blocked and kcap >= MIN_JUMP:
                sum_kv0 = st["sum_off"] + n_dec * (G + 1)
                fixed_s = (W + QB * n_dec) / BW
                tok_s = FTS * n_dec
                if arrivals_matter:
                    mem = fixed_s + KVS * sum_kv0
                    comp = tok_s + SPP * sum_kv0
                    dt0 = (mem if mem >= comp else comp) + OVH
                    kcap = min(kcap, int((arrival[next_arrival] - t) / dt0) + 2)
                if n_dec * (-(-kcap // ps) + 1) > free:  # pages may run out within kcap steps
                    rot = np.roll(np.asarray(cnt, np.int64), -(G % ps))
                    j = np.arange(kcap)
                    need = (j // ps) * n_dec + np.cumsum(rot)[j % ps]
                    kcap = int(np.searchsorted(need, free, side="right"))
            if blocked and kcap >= MIN_JUMP:
                if kcap > len(ar):
                    ar = np.arange(2 * kcap, dtype=np.float64)
                    buf = np.empty(2 * kcap + 1, np.float64)
                    starts = np.empty(2 * kcap + 1, np.float64)
                # sum_kv of step j = sum_kv0 + n_dec * j, exact in float64 (integers < 2**53)
                dts = buf[1 : kcap + 1]
                np.multiply(ar[:kcap], n_dec, out=dts)
                dts += sum_kv0
                last = sum_kv0 + n_dec * (kcap - 1)
                if not (fixed_s + KVS * sum_kv0 > (tok_s + SPP * sum_kv0) * (1 + 1e-9)
                        and fixed_s + KVS * last > (tok_s + SPP * last) * (1 + 1e-9)):
                    comp = dts * SPP  # not clearly memory-bound throughout: take the max
                    comp += tok_s
                    dts *= KVS
                    dts += fixed_s
                    np.maximum(dts, comp, out=dts)
                else:
                    dts *= KVS
                    dts += fixed_s
                dts += OVH
                buf[0] = t
                buf[: kcap + 1].cumsum(out=starts[: kcap + 1])
                k = kcap
                if arrivals_matter:
                    k = int(starts[:kcap].searchsorted(arrival[next_arrival], side="left"))
                if k >= MIN_JUMP:
                    full, rest = divmod(k, ps)
                    phase = G % ps
                    used = n_dec * full + sum(cnt[phase : phase + rest])
                    if phase + rest > ps:
                        used += sum(cnt[: phase + rest - ps])
                    st["free"] = free - used
                    if max_off is None:
                        max_off = max(dec_off.values())
                    end = float(starts[k])
                    add_segment((G, k, t, end, n_dec, n_dec, n_dec, 0, sum_kv0, max_off + G + 1, sum_kv0,
                                 len(waiting)))
                    t = end
                    G += k
                    finish_decodes(G - 1)
                    continue

        # --- one general step -----------------------------------------------------------
        budget = budget_max
        chunks: list[tuple[int, int]] = []  # (request, new tokens): prefill/mixed sequences
        preempted = stop = False
        need_now = cnt[G % ps]
        if need_now <= free:
            st["free"] = free - need_now
        else:  # decodes one by one in admission order, preempting the newest as needed
            for r in sorted(dec_off, key=adm.__getitem__):
                if not is_running[r]:
                    continue
                need = 1 if (dec_off[r] + G) % ps == 0 else 0
                while st["free"] < need:
                    victim, _ = preempt(0)
                    preempted = True
                    if victim == r:
                        stop = True
                        break
                if stop:
                    break
                st["free"] -= need
        n_dec = st["n_dec"]
        budget -= n_dec
        for r in list(prefilling) if prefilling else ():
            if stop or budget == 0:
                break
            if not is_running[r]:
                continue
            c = computed[r]
            n_new = min(prompt[r] + generated[r] - c, budget, cap)
            need = -(-(c + n_new) // ps) - held[r]
            while st["free"] < need:
                victim, refund = preempt(1)
                budget += refund
                preempted = True
                if victim == r:
                    stop = True
                    break
            if stop:
                break
            st["free"] -= need
            held[r] += need
            chunks.append((r, n_new))
            budget -= n_new
        while not preempted and waiting and budget > 0 and len(running) < max_seqs:
            r = waiting[0]
            cached, blocks = head_cached(r)
            remaining = prompt[r] + generated[r] - cached
            n_new = min(remaining, budget, cap)
            if not chunked and n_new < remaining <= budget_max:
                break
            need = -(-(cached + n_new) // ps)
            if need > st["free"]:
                break
            waiting.popleft()
            running.append(r)
            prefilling.append(r)
            is_running[r] = True
            adm[r] = admissions
            admissions += 1
            if cache is not None:
                cache.touch(blocks)
            hit_tokens += cached
            computed[r] = cached
            st["free"] -= need
            held[r] = need
            chunks.append((r, n_new))
            budget -= n_new
        n_dec = st["n_dec"]
        if not n_dec and not chunks:
            continue

        # --- cost and record the step ----------------------------------------------------
        num_tokens = n_dec
        sum_kv = pairs = st["sum_off"] + n_dec * (G + 1)
        max_kv = 0
        if n_dec:
            if max_off is None:
                max_off = max(dec_off.values())
            max_kv = max_off + G + 1
        num_q1 = n_dec
        num_chunk = 0
        for r, q in chunks:
            kv = computed[r] + q
            num_tokens += q
            sum_kv += kv
            pairs += q * kv - q * (q - 1) // 2
            if kv > max_kv:
                max_kv = kv
            if q == 1:
                num_q1 += 1
            elif q == chunk_size:
                num_chunk += 1
            add_chunk((G, r, adm[r], q, kv))
        mem = (W + QB * num_tokens) / BW + KVS * sum_kv
        comp = FTS * num_tokens + SPP * pairs
        end = t + ((mem if mem >= comp else comp) + OVH)
        add_segment((G, 1, t, end, n_dec + len(chunks), num_tokens, num_q1, num_chunk, sum_kv, max_kv, pairs,
                         len(waiting)))
        t = end

        # --- after the step: sample tokens, finish requests ----------------------------------
        for r, q in chunks:
            c = computed[r] + q
            computed[r] = c
            if c != prompt[r] + generated[r]:
                continue
            g = generated[r] + 1
            generated[r] = g
            prefilling.remove(r)
            if cache is not None:
                cache.insert(cache.full_blocks(block_of(r), prompt[r]))
            if g == output[r]:
                running.remove(r)
                is_running[r] = False
                st["free"] += held[r]
                held[r] = 0
                finish_step[r] = G
                st["done"] += 1
                continue
            off = c - (G + 1)
            dec_off[r] = off
            dec_start[r] = G + 1
            cnt[-off % ps] += 1
            st["n_dec"] += 1
            st["sum_off"] += off
            if max_off is not None and off > max_off:
                max_off = off
            heapq.heappush(heap, (prompt[r] + output[r] - 2 - off, life[r], r))
        finish_decodes(G)
        G += 1

    return SimulationResult.from_rows(
        requests=requests, spec=spec, cost=cost, num_steps=G, end_s=t, segments=segments,
        decodes=intervals, chunks=chunk_rows, finish_step=finish_step,
        preemptions=st["preemptions"], prefix_hit_tokens=hit_tokens,
    )
