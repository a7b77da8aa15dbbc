"""Near-duplicate groups from perceptual hashes (the Azure seed's dhash de-duplication).

Two photos are near-duplicates when their 256-bit dhashes differ in at most ``max_distance`` bits.
Groups are the connected components of that relation. A group inside one class is redundancy; a
group across classes is an ambiguous label; a group across splits is leakage that inflates test
accuracy, which is why the split keeps each group on one side.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_MAX_DISTANCE = 6  # of 256 bits; re-encodes and small resizes stay well inside this


@dataclass
class DuplicateGroup:
    members: list[int]  # indices into the records list

    def kinds(self, records) -> list[str]:
        labels = {records[i].label for i in self.members}
        splits = {records[i].given_split for i in self.members}
        out = ["within-class" if len(labels) == 1 else "cross-class"]
        if len(splits) > 1:
            out.append("cross-split")
        return out


def _popcount_rows(x: np.ndarray) -> np.ndarray:
    return np.unpackbits(x, axis=-1).sum(axis=-1, dtype=np.int32) if not hasattr(np, "bitwise_count") \
        else np.bitwise_count(x).sum(axis=-1, dtype=np.int32)


def find_groups(hashes: list[np.ndarray], max_distance: int = DEFAULT_MAX_DISTANCE,
                chunk: int = 256) -> list[DuplicateGroup]:
    """Connected components (size >= 2) of the 'within max_distance bits' relation.

    Comparing every pair is quadratic (64,000 photos: two billion pairs). By the pigeonhole
    principle, two hashes that differ in at most ``max_distance`` bits agree exactly on at least
    one of ``max_distance + 1`` disjoint bit segments, so only photos that share a segment value
    are compared (multi-index hashing): the same groups, in time and memory close to linear."""
    n = len(hashes)
    if n < 2:
        return []
    h = np.stack(hashes).astype(np.uint8)  # (n, 32)
    parent = np.arange(n)

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def link_within(idx: np.ndarray):
        """Union every pair of ``idx`` within max_distance (blockwise: bounded memory)."""
        sub = h[idx]
        for start in range(0, len(idx), chunk):
            d = _popcount_rows(sub[start:start + chunk, None, :] ^ sub[None, start:, :])
            for a, b in zip(*np.nonzero(d <= max_distance)):
                a, b = idx[a + start], idx[b + start]
                if a < b:
                    ra, rb = find(a), find(b)
                    if ra != rb:
                        parent[max(ra, rb)] = min(ra, rb)

    bits = np.unpackbits(h, axis=1)
    edges = np.linspace(0, bits.shape[1], max_distance + 2).astype(int)
    for lo, hi in zip(edges[:-1], edges[1:]):
        _, bucket = np.unique(np.packbits(bits[:, lo:hi], axis=1), axis=0, return_inverse=True)
        bucket = bucket.ravel()
        order = np.argsort(bucket, kind="stable")
        cuts = np.flatnonzero(np.diff(bucket[order])) + 1
        for members in np.split(order, cuts):
            if len(members) > 1:
                link_within(np.sort(members))
    comps: dict[int, list[int]] = {}
    for i in range(n):
        comps.setdefault(find(i), []).append(i)
    return [DuplicateGroup(sorted(m)) for m in comps.values() if len(m) > 1]
