"""Prefix cache of the scheduler simulation: an LRU set of prompt-block ids.

A block is ``block_tokens`` prompt tokens named by the trace (Mooncake ``hash_ids``:
equal ids are the same prefix). A request's prompt blocks enter the cache when its
prefill completes; a later request skips the prefill of its longest run of leading
blocks found in the cache (they still count in its ``kv_len`` and occupy its pages: the
model does not share physical pages). Capacity is in blocks; the least recently used
block leaves first.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np


class PrefixCache:
    def __init__(self, capacity_blocks: int, block_tokens: int) -> None:
        self.capacity_blocks = int(capacity_blocks)
        self.block_tokens = int(block_tokens)
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block: int) -> bool:
        return block in self._blocks

    def full_blocks(self, blocks: np.ndarray, prompt_len: int) -> list[int]:
        """The ids of the blocks lying wholly inside the prompt."""
        n = min(len(blocks), prompt_len // self.block_tokens)
        return blocks[:n].tolist()

    def lookup(self, blocks: list[int]) -> int:
        """Number of leading ``blocks`` present (no LRU update)."""
        hit = 0
        for b in blocks:
            if b not in self._blocks:
                break
            hit += 1
        return hit

    def touch(self, blocks: list[int]) -> None:
        """Mark blocks used (most recent last)."""
        for b in blocks:
            self._blocks.move_to_end(b)

    def insert(self, blocks: list[int]) -> None:
        """Add (or refresh) blocks, evicting the least recently used beyond capacity."""
        store = self._blocks
        for b in blocks:
            if b in store:
                store.move_to_end(b)
            else:
                store[b] = None
        while len(store) > self.capacity_blocks:
            store.popitem(last=False)
