"""Balanced k-means: Lloyd's iterations whose assignment step gives every cluster N // K or N // K + 1 points.

MoDE clusters with balanced k-means (kernelmachine's `kmeans_pytorch`: an auction over the full N x K distance
matrix, exact N // K per cluster); that needs O(N K) memory and many auction rounds per iteration. Here the
assignment step is the same problem, solved over each point's `candidates` nearest centroids (faiss, GPU when
present):

1. every cluster has a fixed capacity, N // K or N // K + 1, summing to N;
2. a few rounds of an auction (`price_assign`) raise the prices of overfull clusters, so that the points that
   lose least by moving are the ones that move (warm-started from the previous iteration's prices);
3. deferred acceptance on the price-adjusted costs settles the rest: in rounds, each unplaced point proposes
   to its next candidate; each cluster keeps the best proposals up to its capacity and releases the rest;
4. points that have run through all their candidates (few) are placed the same way among the clusters that
   still have room, with every such cluster a candidate, so every cluster ends exactly full.

The update step is the plain mean (renormalised for the spherical metric), and iterations stop when fewer than
`tol` of the points change cluster. Every run is seeded: the same input and seed give the same clusters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from mode.core.compute import nearest, normalise

log = logging.getLogger(__name__)


@dataclass
class BalancedResult:
    centroids: np.ndarray  # [k, d] float32 (unit norm for the cosine metric)
    labels: np.ndarray  # [n] int64
    iterations: int
    changed: list[float]  # share of points that changed cluster, per iteration

    def objective(self, x: np.ndarray, metric: str) -> float:
        """Mean cosine to the assigned centroid (cosine), or minus the mean squared distance (euclidean)."""
        c = self.centroids[self.labels]
        return float(np.mean(np.sum(x * c, axis=1)) if metric == "cosine" else -np.mean(np.sum((x - c) ** 2, 1)))


def capacities(n: int, k: int) -> np.ndarray:
    """N // K for every cluster, plus one for the first N % K: they sum to N."""
    return np.full(k, n // k, np.int64) + (np.arange(k) < n % k)


def deferred_acceptance(cost: np.ndarray, cand: np.ndarray, caps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Capacitated stable assignment of points to their candidate clusters (lower cost is better).

    Args:
        cost: [n, m] each point's cost for its candidates, in increasing order.
        cand: [n, m] the candidate cluster ids.
        caps: [k] how many points each cluster takes.

    Returns:
        (labels [n], -1 where a point was rejected by all its candidates; the cost of each placed point)
    """
    n, m = cost.shape
    held = np.full(n, -1, np.int64)
    held_cost = np.zeros(n, cost.dtype)
    nxt = np.zeros(n, np.int64)
    free = np.arange(n)
    touched = np.zeros(len(caps) + 1, bool)  # the last slot stands for "held by no cluster" (-1)
    while free.size:
        free = free[nxt[free] < m]
        if not free.size:
            break
        clusters, costs = cand[free, nxt[free]], cost[free, nxt[free]]
        nxt[free] += 1
        touched[:] = False
        touched[clusters] = True
        holders = np.flatnonzero(touched[held])  # only clusters that got proposals can change their holders
        pts = np.concatenate([holders, free])
        cl = np.concatenate([held[holders], clusters])
        co = np.concatenate([held_cost[holders], costs])
        order = np.lexsort((pts, co, cl))  # by cluster, then cost (ties: lower point id first, deterministic)
        cl_sorted = cl[order]
        starts = np.searchsorted(cl_sorted, cl_sorted, side="left")
        keep = (np.arange(len(order)) - starts) < caps[cl_sorted]
        kept, released = order[keep], order[~keep]
        held[pts[released]] = -1
        held[pts[kept]], held_cost[pts[kept]] = cl[kept], co[kept]
        free = np.sort(pts[released])
    return held, held_cost


def price_assign(cost: np.ndarray, cand: np.ndarray, caps: np.ndarray, prices: np.ndarray | None = None,
                 max_rounds: int = 1000, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray, int]:
    """Each point to its candidate of least cost + price, raising the prices of overfull clusters until none is.

    An auction in rounds: an overfull cluster's price rises by just enough (plus `eps`) for its surplus points,
    those that lose least by moving to their next choice, to move. Prices only rise, so a round never refills
    a cluster beyond what the next one corrects; with capacities summing to N, no overfull cluster means every
    cluster exactly full. With all candidates the result minimises the total cost (to within N x eps).

    Returns:
        (labels [n], prices [k], rounds); clusters may still be overfull if `max_rounds` ran out.
    """
    n, k = len(cost), len(caps)
    prices = np.zeros(k, cost.dtype) if prices is None else np.asarray(prices, cost.dtype).copy()
    rows = np.arange(n)
    labels = cand[:, 0]
    for r in range(max_rounds):
        adj = cost + prices[cand]
        first = adj.argmin(axis=1)
        labels = cand[rows, first]
        excess = np.bincount(labels, minlength=k) - caps
        over = np.flatnonzero(excess > 0)
        if not over.size or cand.shape[1] == 1:
            return labels, prices, r
        best = adj[rows, first]
        adj[rows, first] = np.inf
        regret = adj.min(axis=1) - best  # how far this point's cluster's price may rise before it leaves
        order = np.lexsort((rows, regret, labels))
        starts = np.searchsorted(labels[order], over)
        prices[over] += regret[order[starts + excess[over] - 1]] + eps
    return labels, prices, max_rounds


def faiss_kmeans(x: np.ndarray, k: int, metric: str, niter: int, seed: int, weights: np.ndarray | None = None,
                 nredo: int = 1):
    """faiss's (unbalanced) k-means, seeded; spherical for the cosine metric; GPU when present. The trained
    `faiss.Kmeans` (centroids, obj, iteration_stats)."""
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=niter, nredo=nredo, seed=seed, spherical=metric == "cosine",
                      gpu=faiss.get_num_gpus() > 0, max_points_per_centroid=max(256, len(x) // k + 1),
                      min_points_per_centroid=1, verbose=False)
    km.train(np.ascontiguousarray(x, dtype=np.float32), weights=weights)
    return km


def balanced_assign(x: np.ndarray, centroids: np.ndarray, metric: str = "cosine", candidates: int = 32,
                    caps: np.ndarray | None = None, prices: np.ndarray | None = None, price_rounds: int = 5
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Each row of `x` to a centroid, every centroid taking exactly `caps` rows (default: N // K or N // K + 1).

    `price_rounds` rounds of the auction (`price_assign`) move the most contested points first; deferred
    acceptance on the price-adjusted costs then settles the rest exactly. Returns (labels, the auction's
    prices, to warm-start the next call with)."""
    n, k = len(x), len(centroids)
    caps = capacities(n, k) if caps is None else np.asarray(caps, np.int64)
    if caps.sum() != n:
        raise ValueError(f"capacities sum to {caps.sum()}, not the {n} points")
    cost, cand = nearest(x, centroids, min(candidates, k), metric)
    labels, prices, _ = price_assign(cost, cand, caps, prices, max_rounds=price_rounds)
    if (np.bincount(labels, minlength=k) > caps).any():  # rounds ran out: settle the rest by deferred acceptance
        adj = cost + prices[cand]
        order = np.argsort(adj, axis=1, kind="stable")
        labels, _ = deferred_acceptance(np.take_along_axis(adj, order, 1), np.take_along_axis(cand, order, 1), caps)
    rest = np.flatnonzero(labels < 0)
    if rest.size:  # rejected by all their candidates: place them among the clusters with room, all candidates
        room = caps - np.bincount(labels[labels >= 0], minlength=k)
        open_ = np.flatnonzero(room > 0)
        sub_cost, sub_idx = nearest(x[rest], centroids[open_], len(open_), metric)
        sub, _ = deferred_acceptance(sub_cost, sub_idx, room[open_])
        labels[rest] = open_[sub]
    return labels, prices


def _means(x: np.ndarray, labels: np.ndarray, k: int, old: np.ndarray) -> np.ndarray:
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=k)
    present = np.flatnonzero(counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[present]
    out = old.astype(np.float32).copy()
    out[present] = np.add.reduceat(x[order], starts) / counts[present, None]
    return out


def balanced_kmeans(x: np.ndarray, k: int, metric: str = "cosine", niter: int = 20, seed: int = 0,
                    candidates: int = 32, tol: float = 1e-3, init_niter: int = 10,
                    price_rounds: int = 5) -> BalancedResult:
    """Balanced k-means of the rows of `x` (float32; unit norm for the cosine metric) into `k` clusters.

    Starts from faiss's (unbalanced) k-means after `init_niter` iterations, seeded, then runs up to `niter`
    balanced Lloyd iterations (see the module docstring).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"cannot make {k} balanced clusters of {n} points")
    km = faiss_kmeans(x, k, metric, max(1, init_niter), seed)
    centroids = np.array(km.centroids, dtype=np.float32)
    labels = np.full(n, -1, np.int64)
    changed: list[float] = []
    prices = None
    for it in range(niter):
        new, prices = balanced_assign(x, centroids, metric, candidates, prices=prices, price_rounds=price_rounds)
        prices -= prices.min()
        changed.append(float(np.mean(new != labels)))
        labels = new
        centroids = _means(x, labels, k, centroids)
        if metric == "cosine":
            centroids = normalise(centroids)
        log.debug(f"balanced k-means: iteration {it + 1}, {changed[-1]:.4%} of points moved")
        if changed[-1] < tol:
            break
    return BalancedResult(centroids, labels, len(changed), changed)
