"""What contained checkouts and offline renders cost.

Run: .venv/bin/python -m benchmarks.containment [--files 20000] [--dirs 200] [--rounds 5]

- **tree check**: ``git_tree.unsafe_entry`` over every entry of a commit (``--files`` files in
  ``--dirs`` directories), cold (a fresh thread: no subtree remembered) and warm (the next
  commit, one file changed: unchanged subtrees are skipped by id);
- **export**: ``git_tree.export_tree`` of the whole commit (check included) vs the same tree
  written by ``git archive | tar -x`` (the CLI floor);
- **offline tool**: one ``python -c ''`` through ``run_tool`` with and without the network
  namespace (``unshare --net --map-root-user``), the price every render tool pays.

Figures go to stdout as JSON; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator.adapters import git_tree
from orchestrator.rendering import RenderLimits
from orchestrator.rendering.safety import offline_prefix, run_tool
from tests.support.repos import Repo


def in_thread(fn: Callable[[], object]) -> float:
    """Seconds ``fn`` takes in a fresh thread (per-thread caches start empty)."""
    took: list[float] = []

    def run() -> None:
        start = time.perf_counter()
        fn()
        took.append(time.perf_counter() - start)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return took[0]


def ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--dirs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-containment-"))
    try:
        repo = Repo(work / "repo")
        files = {f"d{i % args.dirs}/f{i}.yaml": f"k: {i}\n" for i in range(args.files)}
        first = repo.commit(files, "many files")
        cold, warm, export, archive = [], [], [], []
        for r in range(args.rounds):
            cold.append(in_thread(lambda: git_tree.unsafe_entry(repo.path, first)))
            second = repo.commit({"d0/f0.yaml": f"k: changed {r}\n"}, "one file")

            def both(sha: str = second) -> None:
                git_tree.unsafe_entry(repo.path, first)
                start = time.perf_counter()
                git_tree.unsafe_entry(repo.path, sha)
                warm.append(time.perf_counter() - start)

            in_thread(both)
            dest = work / f"snap{r}"
            export.append(in_thread(lambda d=dest, s=second: git_tree.export_tree(repo.path, s,
                                                                                 d)))
            floor = work / f"cli{r}"
            floor.mkdir()
            start = time.perf_counter()
            subprocess.run(f"git -C {repo.path} archive {second} | tar -x -C {floor}",
                           shell=True, check=True)
            archive.append(time.perf_counter() - start)
            shutil.rmtree(dest)
            shutil.rmtree(floor)
        tool: dict[str, list[float]] = {"network": [], "offline": []}
        for _ in range(args.rounds * 6):
            for mode, net in (("network", True), ("offline", False)):
                start = time.perf_counter()
                run_tool([sys.executable, "-c", ""], cwd=work, limits=RenderLimits(network=net),
                         what="bench")
                tool[mode].append(time.perf_counter() - start)
        print(json.dumps({
            "files": args.files, "dirs": args.dirs, "rounds": args.rounds,
            "tree_check_cold_ms": ms(cold), "tree_check_warm_ms": ms(warm),
            "export_ms": ms(export), "git_archive_tar_ms": ms(archive),
            "offline_available": bool(offline_prefix()),
            "tool_network_ms": ms(tool["network"]), "tool_offline_ms": ms(tool["offline"]),
        }, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
