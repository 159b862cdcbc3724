"""Nearest neighbour + 2-opt: the textbook tour heuristic that the planner's benchmark
measures OR-Tools against (and what a planner without a solver library would do).

The tour starts at node 0 and visits the nearest unvisited node each time; 2-opt then
reverses any segment whose reversal shortens the tour, best improvement first, until no
reversal helps (a 2-optimal tour). Symmetric matrices only: a reversal's gain is computed from
the two edges it replaces.
"""

from __future__ import annotations

from collections.abc import Sequence

from companion.routing.planner import Tour
from companion.routing.tsplib import tour_length


def nearest_neighbour(matrix: Sequence[Sequence[float]]) -> list[int]:
    """A tour from node 0, always on to the nearest node not yet visited (ties: lowest index)."""
    size = len(matrix)
    tour = [0]
    left = set(range(1, size))
    while left:
        row = matrix[tour[-1]]
        nearest = min(left, key=lambda j: (row[j], j))
        tour.append(nearest)
        left.remove(nearest)
    return tour


def two_opt(matrix: Sequence[Sequence[float]], tour: Sequence[int]) -> list[int]:
    """`tour` improved by 2-opt moves (best improvement per pass) until none shortens it;
    node 0 stays first."""
    tour = list(tour)
    size = len(tour)
    if size < 4:
        return tour
    while True:
        best_gain, best = 1e-9, None
        for i in range(size - 1):
            a, b = tour[i], tour[i + 1]
            row_a, row_b = matrix[a], matrix[b]
            removed_ab = row_a[b]
            # j runs to the last node; the edge after it closes the tour back to tour[0].
            for j in range(i + 2, size if i > 0 else size - 1):
                c, d = tour[j], tour[(j + 1) % size]
                gain = removed_ab + matrix[c][d] - row_a[c] - row_b[d]
                if gain > best_gain:
                    best_gain, best = gain, (i, j)
        if best is None:
            return tour
        i, j = best
        tour[i + 1 : j + 1] = reversed(tour[i + 1 : j + 1])


def nearest_neighbour_two_opt(matrix: Sequence[Sequence[float]]) -> Tour:
    """The baseline tour: nearest neighbour from node 0, then 2-opt."""
    tour = two_opt(matrix, nearest_neighbour(matrix))
    return Tour(order=tuple(tour), length=tour_length(matrix, tour))
