"""Evolutionary search for rho per layer (R-Sparse, Sec. 4.3: fitness = calibration perplexity).

Genome: one rho per (group of consecutive blocks, linear), as indices into a grid of allowed values; layers of a
group share their rho (the paper searches group-wise to keep the search small). The initial population holds the
two fixed recipes (all rho = 1, the sparse-only baseline, and all rho = 0.95, the paper's uniform recipe) so the
search can only do better than both on calibration data, plus random genomes around random uniform levels.

Each generation keeps the best quarter (elitism), then fills the population with children of tournament-chosen
parents (uniform crossover, then each gene moves one or two grid steps with probability `mutation`).
Reproducible: one seeded numpy Generator drives every choice. After every evaluation the checkpoint JSON is
rewritten (atomically) with every genome evaluated so far and the best one; a rerun with the same settings
replays the same choices and takes fitness values from the checkpoint, so an interrupt loses no work.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .atomic import atomic_path

RHO_GRID = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0)


@dataclass(frozen=True)
class SearchConfig:
    population: int = 12
    generations: int = 4
    groups: int = 6  # groups of consecutive blocks sharing a rho per linear
    mutation: float = 0.15
    seed: int = 0
    grid: tuple[float, ...] = RHO_GRID
    baselines: bool = True  # start from sparse-only and uniform(0.95) besides random genomes


def group_of(n_layer: int, groups: int) -> np.ndarray:
    """Block index -> group index, groups of consecutive blocks as equal as possible."""
    groups = max(1, min(groups, n_layer))
    return np.arange(n_layer) * groups // n_layer


def expand(genome: np.ndarray, grid, n_layer: int) -> np.ndarray:
    """(groups, 7) grid indices -> (n_layer, 7) rho."""
    return np.asarray(grid, dtype=np.float64)[genome[group_of(n_layer, genome.shape[0])]]


def _key(genome: np.ndarray) -> str:
    return ",".join(map(str, genome.reshape(-1).tolist()))


class Search:
    def __init__(self, fitness: Callable[[np.ndarray], float], n_layer: int, n_linears: int, cfg: SearchConfig,
                 checkpoint: str | os.PathLike | None = None, context: dict | None = None, progress: bool = True):
        """`fitness(rho (n_layer, n_linears)) -> float`, lower is better (log perplexity). `context` (sparsity,
        model, ...) is stored in the checkpoint; a checkpoint with another context or config is not reused."""
        self.fitness_fn, self.n_layer, self.cfg = fitness, n_layer, cfg
        self.groups = max(1, min(cfg.groups, n_layer))
        self.shape = (self.groups, n_linears)
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.context = dict(context or {})
        self.progress = progress
        self.evaluated: dict[str, float] = {}
        self.history: list[dict] = []  # per generation: best and mean fitness
        self.initial_best = float("inf")
        if self.checkpoint and self.checkpoint.is_file():
            saved = json.loads(self.checkpoint.read_text())
            if saved.get("config") == self._config_json() and saved.get("context") == self.context:
                self.evaluated = {k: float(v) for k, v in saved["evaluated"].items()}

    def _config_json(self) -> dict:
        return json.loads(json.dumps(asdict(self.cfg)))

    def evaluate(self, genome: np.ndarray) -> float:
        k = _key(genome)
        if k not in self.evaluated:
            self.evaluated[k] = float(self.fitness_fn(expand(genome, self.cfg.grid, self.n_layer)))
            self.save()
        return self.evaluated[k]

    def best(self) -> tuple[np.ndarray, float]:
        return self.ranked(1)[0]

    def ranked(self, k: int) -> list[tuple[np.ndarray, float]]:
        """The k best genomes evaluated so far, best first."""
        keys = sorted(self.evaluated, key=self.evaluated.get)[:k]
        return [(np.array(list(map(int, key.split(","))), dtype=np.int64).reshape(self.shape), self.evaluated[key])
                for key in keys]

    def save(self) -> None:
        if not self.checkpoint:
            return
        genome, fit = self.best()
        doc = {"version": 1, "config": self._config_json(), "context": self.context,
               "best": {"fitness": fit, "rho": expand(genome, self.cfg.grid, self.n_layer).tolist(),
                        "genome": genome.tolist()},
               "history": self.history, "evaluated": self.evaluated}
        with atomic_path(self.checkpoint) as tmp:
            tmp.write_text(json.dumps(doc))

    def initial_population(self, rng: np.random.Generator) -> list[np.ndarray]:
        cfg, n = self.cfg, len(self.cfg.grid)
        pop = []
        if cfg.baselines:
            pop.append(np.full(self.shape, n - 1))  # rho = 1: sparse-only
            pop.append(np.full(self.shape, int(np.argmin(np.abs(np.asarray(cfg.grid) - 0.95)))))
        while len(pop) < cfg.population:
            level = rng.integers(0, n)
            g = np.clip(level + rng.integers(-2, 3, size=self.shape), 0, n - 1)
            pop.append(g)
        return pop[:cfg.population]

    def run(self) -> tuple[np.ndarray, float]:
        from tqdm import tqdm

        cfg = self.cfg
        rng = np.random.default_rng(cfg.seed)
        n = len(cfg.grid)
        pop = self.initial_population(rng)
        bar = tqdm(total=cfg.population * (cfg.generations + 1), desc="search rho", disable=not self.progress)
        try:
            for gen in range(cfg.generations + 1):
                fits = []
                for g in pop:
                    fits.append(self.evaluate(g))
                    bar.update(1)
                    bar.set_postfix(best=f"{min(self.evaluated.values()):.4f}", gen=gen)
                if gen == 0:
                    self.initial_best = min(fits)
                self.history.append({"generation": gen, "best": min(fits), "mean": float(np.mean(fits))})
                self.save()
                if gen == cfg.generations:
                    break
                order = np.argsort(fits, kind="stable")
                ranked = [pop[i] for i in order]
                n_elite = max(1, cfg.population // 4)
                nxt = [g.copy() for g in ranked[:n_elite]]
                seen = {_key(g) for g in nxt}
                tries = 0
                while len(nxt) < cfg.population:
                    a, b = self._tournament(rng, ranked), self._tournament(rng, ranked)
                    child = np.where(rng.random(self.shape) < 0.5, a, b)
                    moves = rng.choice([-2, -1, 1, 2], size=self.shape) * (rng.random(self.shape) < cfg.mutation)
                    child = np.clip(child + moves, 0, n - 1)
                    tries += 1
                    if _key(child) in seen and tries < 50 * cfg.population:
                        continue  # a copy of an individual already in the next generation teaches nothing
                    seen.add(_key(child))
                    nxt.append(child)
                pop = nxt
        finally:
            bar.close()
        return self.best()

    @staticmethod
    def _tournament(rng: np.random.Generator, ranked: list[np.ndarray], k: int = 3) -> np.ndarray:
        """`ranked` is sorted best first, so the smallest of k random ranks wins."""
        return ranked[int(rng.integers(0, len(ranked), size=k).min())]
