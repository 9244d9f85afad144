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
  floating-point order as single steps (:meth:`.StepCostModel.decode_stretch_s`), and
  recorded as one segment.
- The output is compact but complete (:class:`.stream.SimulationResult`): per-step
  summaries as run-length segments, decode lifetimes as intervals, prefill/mixed chunks
  as rows; any step's full batch is rebuilt from them.

Every step time comes from :class:`.StepCostModel` (one formula for the single step, the
stretch and the reference stepper).
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


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class _Simulation:
    """The scheduler's state and its moves. Hot paths bind attributes to locals: this runs
    once per simulated step or stretch (hundreds of thousands of times per trace)."""

    __slots__ = ('requests', 'spec', 'cost', 'n', 'arrival', 'prompt', 'output', 'block_of', 'ps', 'budget_max', 'max_seqs', 'cap', 'chunked', 'chunk_size', 'cache', 'computed', 'generated', 'held', 'adm', 'is_running', 'finish_step', 'life', 'dec_off', 'dec_start', 'cnt', 'heap', 'n_dec', 'sum_off', 'max_off', 'prefilling', 'running', 'waiting', 'free', 't', 'step', 'next_arrival', 'admissions', 'hit_tokens', 'preemptions', 'done', 'segments', 'intervals', 'chunk_rows', 'ar', 'buf', 'starts')

    def __init__(self, requests, spec: SchedulerSpec, cost: StepCostModel) -> None:
        n = len(requests)
        self.requests, self.spec, self.cost, self.n = requests, spec, cost, n
        self.arrival = requests.arrival_s.tolist()
        self.prompt = requests.prompt_len.tolist()
        self.output = requests.output_len.tolist()
        self.block_of = requests.blocks
        self.ps = spec.page_size
        self.budget_max = spec.max_num_batched_tokens
        self.max_seqs = spec.max_num_seqs
        self.cap = spec.chunk_cap
        self.chunked = spec.chunked_prefill
        self.chunk_size = spec.chunk_prefill_size or 0
        self.cache = PrefixCache(spec.cache_capacity_blocks, spec.prefix_block_tokens) if spec.prefix_caching else None
        # per request
        self.computed = [0] * n
        self.generated = [0] * n
        self.held = [0] * n  # pages of a request not decoding (decodes: ceil(computed / ps))
        self.adm = [-1] * n  # admission sequence number of the current admission
        self.is_running = [False] * n
        self.finish_step = [-1] * n
        self.life = [0] * n  # bumps when a decode leaves, invalidating its heap entry
        # decodes, kept implicitly
        self.dec_off: dict[int, int] = {}  # decoding request -> computed - step
        self.dec_start: dict[int, int] = {}  # decoding request -> its first decode step
        self.cnt = [0] * self.ps  # decodes per page phase
        self.heap: list[tuple[int, int, int]] = []  # (finish step, life, request)
        self.n_dec = 0
        self.sum_off = 0
        self.max_off: int | None = None  # max(dec_off.values()); None: recompute
        # queues and the pool
        self.prefilling: list[int] = []  # running, not decoding, admission order
        self.running: list[int] = []  # admission order
        self.waiting: deque[int] = deque()
        self.free = spec.num_kv_pages
        # the clock and counters
        self.t = 0.0
        self.step = 0
        self.next_arrival = 0
        self.admissions = 0
        self.hit_tokens = 0
        self.preemptions = 0
        self.done = 0
        # output
        self.segments: list[tuple] = []  # stream.Segment rows, as plain tuples
        self.intervals: list[tuple] = []  # DECODE_COLUMNS
        self.chunk_rows: list[tuple] = []  # CHUNK_COLUMNS
        # scratch for stretches
        self.ar = np.arange(1024, dtype=np.float64)
        self.buf = np.empty(1025, np.float64)  # [t, step times...] of a stretch
        self.starts = np.empty(1025, np.float64)  # its step start times

    # --- the loop ------------------------------------------------------------------------
    def run(self) -> SimulationResult:
        n, arrival, waiting, cnt, ps = self.n, self.arrival, self.waiting, self.cnt, self.ps
        jump, schedule_step, record_step, advance = self._jump, self._schedule_step, self._record_step, self._advance
        while self.done < n:
            while self.next_arrival < n and arrival[self.next_arrival] <= self.t:
                waiting.append(self.next_arrival)
                self.next_arrival += 1
            if not self.running and not waiting:
                self.t = arrival[self.next_arrival]
                continue
            if self.n_dec and not self.prefilling and cnt[self.step % ps] <= self.free and jump():
                continue
            chunks = schedule_step()
            if not self.n_dec and not chunks:
                continue
            record_step(chunks)
            advance(chunks)
        return SimulationResult.from_rows(
            requests=self.requests, spec=self.spec, cost=self.cost, num_steps=self.step, end_s=self.t,
            segments=self.segments, decodes=self.intervals, chunks=self.chunk_rows, finish_step=self.finish_step,
            preemptions=self.preemptions, prefix_hit_tokens=self.hit_tokens,
        )

    # --- decode bookkeeping ---------------------------------------------------------------
    def _end_decode(self, r: int, end: int) -> int:
        """Take ``r`` out of the decode set (its interval ends before step ``end``)."""
        off = self.dec_off.pop(r)
        self.cnt[-off % self.ps] -= 1
        self.n_dec -= 1
        self.sum_off -= off
        if off == self.max_off:
            self.max_off = None
        self.life[r] += 1
        self.intervals.append((r, self.adm[r], self.dec_start.pop(r), end, off))
        return off

    def _start_decode(self, r: int, computed: int) -> None:
        """``r`` decodes from the next step on, its context at ``computed`` tokens."""
        off = computed - (self.step + 1)
        self.dec_off[r] = off
        self.dec_start[r] = self.step + 1
        self.cnt[-off % self.ps] += 1
        self.n_dec += 1
        self.sum_off += off
        if self.max_off is not None and off > self.max_off:
            self.max_off = off
        heapq.heappush(self.heap, (self.prompt[r] + self.output[r] - 2 - off, self.life[r], r))

    def _max_kv(self) -> int:
        """Longest decode context of the current step (0 without decodes)."""
        if not self.n_dec:
            return 0
        if self.max_off is None:
            self.max_off = max(self.dec_off.values())
        return self.max_off + self.step + 1

    def _finish(self, r: int, step: int, pages: int) -> None:
        self.running.remove(r)
        self.is_running[r] = False
        self.free += pages
        self.finish_step[r] = step
        self.done += 1

    def _finish_decodes(self, step: int) -> None:
        """Finish every decode whose last token came out of ``step``."""
        heap, life = self.heap, self.life
        while heap and heap[0][0] <= step:
            _, lf, r = heapq.heappop(heap)
            if lf != life[r]:
                continue
            self._end_decode(r, step + 1)
            self._finish(r, step, _cdiv(self.prompt[r] + self.output[r] - 1, self.ps))

    # --- preemption ---------------------------------------------------------------------
    def _preempt(self, decodes_scheduled: int) -> tuple[int, int]:
        """Preempt the newest running request; (victim, tokens returned to the budget)."""
        victim = self.running.pop()
        self.is_running[victim] = False
        refund = 0
        if victim in self.dec_off:
            c = self._end_decode(victim, self.step) + self.step
            self.generated[victim] = c - self.prompt[victim] + 1
            self.free += _cdiv(c + decodes_scheduled, self.ps)
            refund = decodes_scheduled
        else:
            self.prefilling.remove(victim)
            self.free += self.held[victim]
            self.held[victim] = 0
        self.computed[victim] = 0
        self.waiting.appendleft(victim)
        self.preemptions += 1
        return victim, refund

    def _make_room(self, r: int, need: int, decodes_scheduled: int) -> tuple[bool, int]:
        """Preempt the newest requests until ``need`` pages are free for ``r``.

        (``r`` keeps its place, tokens refunded to the step's budget); ``r`` itself
        preempted ends the step's scheduling.
        """
        refunded = 0
        while self.free < need:
            victim, refund = self._preempt(decodes_scheduled)
            refunded += refund
            if victim == r:
                return False, refunded
        return True, refunded

    # --- admission ----------------------------------------------------------------------
    def _head_cached(self, r: int) -> tuple[int, list[int]]:
        """(cached tokens, hit blocks) for admitting ``r`` now."""
        cache = self.cache
        if cache is None:
            return 0, []
        blocks = cache.full_blocks(self.block_of(r), self.prompt[r])
        hit = cache.lookup(blocks)
        return min(hit * cache.block_tokens, self.prompt[r] + self.generated[r] - 1), blocks[:hit]

    def _head_blocked(self, pages_now: int) -> bool:
        """Whether the waiting head cannot be admitted at this step (a stretch may go on)."""
        head = self.waiting[0]
        cached, _ = self._head_cached(head)
        remaining = self.prompt[head] + self.generated[head] - cached
        n_new = min(remaining, self.budget_max - self.n_dec, self.cap)
        fits = self.chunked or n_new == remaining or remaining > self.budget_max
        return not fits or _cdiv(cached + n_new, self.ps) > self.free - pages_now

    # --- a decode-only stretch: many steps at once --------------------------------------
    def _jump(self) -> bool:
        """Advance over a decode-only stretch of at least MIN_JUMP steps, if there is one."""
        n_dec, free, ps, G, cnt, t = self.n_dec, self.free, self.ps, self.step, self.cnt, self.t
        next_arrival_s = None  # set when a newcomer could be admitted at the next arrival
        if len(self.running) < self.max_seqs and self.budget_max > n_dec:
            if self.waiting:
                if not self._head_blocked(cnt[G % ps]):
                    return False
            elif self.next_arrival < self.n:
                next_arrival_s = self.arrival[self.next_arrival]
        heap, life = self.heap, self.life
        while heap[0][1] != life[heap[0][2]]:
            heapq.heappop(heap)
        kcap = heap[0][0] - G + 1  # up to and including the next completion step
        if kcap < MIN_JUMP:
            return False
        sum_kv0 = self.sum_off + n_dec * (G + 1)
        if next_arrival_s is not None:
            dt0 = self.cost.scalar_step_time_s(n_dec, sum_kv0, sum_kv0)
            kcap = min(kcap, int((next_arrival_s - t) / dt0) + 2)
        if n_dec * (-(-kcap // ps) + 1) > free:  # pages may run out within kcap steps
            rot = np.roll(np.asarray(cnt, np.int64), -(G % ps))
            j = np.arange(kcap)
            need = (j // ps) * n_dec + np.cumsum(rot)[j % ps]
            kcap = int(np.searchsorted(need, free, side="right"))
        if kcap < MIN_JUMP:
            return False
        if kcap > len(self.ar):
            self.ar = np.arange(2 * kcap, dtype=np.float64)
            self.buf = np.empty(2 * kcap + 1, np.float64)
            self.starts = np.empty(2 * kcap + 1, np.float64)
        buf, starts = self.buf, self.starts
        self.cost.decode_stretch_s(n_dec, sum_kv0, self.ar, buf[1 : kcap + 1])
        buf[0] = t
        buf[: kcap + 1].cumsum(out=starts[: kcap + 1])
        k = kcap if next_arrival_s is None else int(starts[:kcap].searchsorted(next_arrival_s, side="left"))
        if k < MIN_JUMP:
            return False
        full, rest = divmod(k, ps)
        phase = G % ps
        used = n_dec * full + sum(cnt[phase : phase + rest])
        if phase + rest > ps:
            used += sum(cnt[: phase + rest - ps])
        self.free = free - used
        end = float(starts[k])
        self.segments.append((G, k, t, end, n_dec, n_dec, n_dec, 0, sum_kv0, self._max_kv(), sum_kv0, len(self.waiting)))
        self.t = end
        self.step = G + k
        if self.heap[0][0] <= G + k - 1:
            self._finish_decodes(G + k - 1)
        return True

    # --- one general step ------------------------------------------------------------------
    def _schedule_step(self) -> list[tuple[int, int]]:
        """Schedule one step: decodes first (pages, preempting the newest as needed), then
        running prefills, then admissions. Returns its prefill/mixed chunks (request, tokens)."""
        chunks: list[tuple[int, int]] = []
        need_now = self.cnt[self.step % self.ps]
        if need_now <= self.free:
            self.free -= need_now
            preempted = stop = False
        else:
            preempted, stop = self._decode_pages_one_by_one()
        budget = self.budget_max - self.n_dec
        if not stop and self.prefilling:
            budget, p, stop = self._continue_prefills(chunks, budget)
            preempted = preempted or p
        if not preempted:
            self._admit(chunks, budget)
        return chunks

    def _decode_pages_one_by_one(self) -> tuple[bool, bool]:
        """Give each decode its page in admission order; (preempted, stop)."""
        preempted = False
        for r in sorted(self.dec_off, key=self.adm.__getitem__):
            if not self.is_running[r]:
                continue
            need = 1 if (self.dec_off[r] + self.step) % self.ps == 0 else 0
            if self.free < need:
                preempted = True
                ok, _ = self._make_room(r, need, 0)
                if not ok:
                    return True, True
            self.free -= need
        return preempted, False

    def _continue_prefills(self, chunks: list[tuple[int, int]], budget: int) -> tuple[int, bool, bool]:
        """The next chunk of each running prefill; (budget left, preempted, stop)."""
        preempted = False
        for r in list(self.prefilling):
            if budget == 0:
                break
            if not self.is_running[r]:
                continue
            c = self.computed[r]
            n_new = min(self.prompt[r] + self.generated[r] - c, budget, self.cap)
            need = _cdiv(c + n_new, self.ps) - self.held[r]
            if self.free < need:
                preempted = True
                ok, refund = self._make_room(r, need, 1)
                budget += refund
                if not ok:
                    return budget, True, True
            self.free -= need
            self.held[r] += need
            chunks.append((r, n_new))
            budget -= n_new
        return budget, preempted, False

    def _admit(self, chunks: list[tuple[int, int]], budget: int) -> None:
        """Admit waiting requests in order while the budget, the seat count and pages allow."""
        waiting = self.waiting
        while waiting and budget > 0 and len(self.running) < self.max_seqs:
            r = waiting[0]
            cached, blocks = self._head_cached(r)
            remaining = self.prompt[r] + self.generated[r] - cached
            n_new = min(remaining, budget, self.cap)
            if not self.chunked and n_new < remaining <= self.budget_max:
                break
            need = _cdiv(cached + n_new, self.ps)
            if need > self.free:
                break
            waiting.popleft()
            self.running.append(r)
            self.prefilling.append(r)
            self.is_running[r] = True
            self.adm[r] = self.admissions
            self.admissions += 1
            if self.cache is not None:
                self.cache.touch(blocks)
            self.hit_tokens += cached
            self.computed[r] = cached
            self.free -= need
            self.held[r] = need
            chunks.append((r, n_new))
            budget -= n_new

    def _record_step(self, chunks: list[tuple[int, int]]) -> None:
        """Cost the step and record it (its segment and its chunks)."""
        n_dec, G = self.n_dec, self.step
        num_tokens = n_dec
        sum_kv = pairs = self.sum_off + n_dec * (G + 1)
        max_kv = self._max_kv()
        num_q1 = n_dec
        num_chunk = 0
        computed, adm, add_chunk = self.computed, self.adm, self.chunk_rows.append
        for r, q in chunks:
            kv = computed[r] + q
            num_tokens += q
            sum_kv += kv
            pairs += q * kv - q * (q - 1) // 2
            if kv > max_kv:
                max_kv = kv
            if q == 1:
                num_q1 += 1
            elif q == self.chunk_size:
                num_chunk += 1
            add_chunk((G, r, adm[r], q, kv))
        end = self.t + self.cost.scalar_step_time_s(num_tokens, sum_kv, pairs)
        self.segments.append((G, 1, self.t, end, n_dec + len(chunks), num_tokens, num_q1, num_chunk, sum_kv, max_kv,
                              pairs, len(self.waiting)))
        self.t = end

    def _advance(self, chunks: list[tuple[int, int]]) -> None:
        """After the step: sample a token for every finished prompt, finish or start decoding."""
        for r, q in chunks:
            c = self.computed[r] + q
            self.computed[r] = c
            if c != self.prompt[r] + self.generated[r]:
                continue
            g = self.generated[r] + 1
            self.generated[r] = g
            self.prefilling.remove(r)
            if self.cache is not None:
                self.cache.insert(self.cache.full_blocks(self.block_of(r), self.prompt[r]))
            if g == self.output[r]:
                pages, self.held[r] = self.held[r], 0
                self._finish(r, self.step, pages)
                continue
            self._start_decode(r, c)
        if self.heap and self.heap[0][0] <= self.step:
            self._finish_decodes(self.step)
        self.step += 1


def simulate(requests, spec: SchedulerSpec, cost: StepCostModel) -> SimulationResult:
    """Simulate ``requests`` (a :class:`.traces.RequestTable`) under ``spec``."""
    check_feasible(spec, requests.prompt_len, requests.output_len)
    return _Simulation(requests, spec, cost).run()
