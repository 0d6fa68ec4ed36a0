"""What exporting one large blob costs in memory: libgit2 (loaded whole) vs ``git cat-file``.

Run: .venv/bin/python -m benchmarks.blob_export [--mib 100] [--random]

A commit holds one ``--mib`` MiB file (zeros by default: "sparse" content, tiny in the object
store, the worst case for a loader since it inflates 1000:1; ``--random`` for incompressible
bytes). Each mode runs ``git_tree.export_tree`` in a fresh Python process and reports that
process's peak RSS (``ru_maxrss``) and the seconds taken, against a baseline process that
imports the same modules and opens the repository without exporting:

- ``loaded``: ``STREAM_ABOVE`` above the file's size, so the blob goes through libgit2
  (``Blob.data``) and is written in chunks: the code before streaming;
- ``streamed``: the default, ``git cat-file blob`` writes into the opened file.

Figures go to stdout as JSON; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pygit2

from tests.support.repos import AUTHOR

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from orchestrator.adapters import git_tree
from orchestrator.adapters.git_local import open_repo
repo_path, sha, dest, mode = sys.argv[1:5]
open_repo(repo_path)
started = time.monotonic()
if mode == "loaded":
    git_tree.STREAM_ABOVE = 1 << 62
if mode != "baseline":
    git_tree.export_tree(repo_path, sha, Path(dest), max_file_bytes=1 << 40)
print(json.dumps({"seconds": round(time.monotonic() - started, 3),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                        / 1024, 1)}))
"""


def make_repo(root: Path, mib: int, random: bool) -> tuple[Path, str]:
    """A repository whose one commit holds ``big.bin`` of ``mib`` MiB, written by git from a
    file on disk (never held in this process's memory)."""
    path = root / "repo"
    repo = pygit2.init_repository(str(path))
    data = root / "big.bin"
    with data.open("wb") as out:
        if random:
            for _ in range(mib):
                out.write(os.urandom(1 << 20))
        else:
            out.truncate(mib << 20)  # a sparse file: zeros
    oid = subprocess.run(["git", "--git-dir", str(path / ".git"), "hash-object", "-w",
                          str(data)], capture_output=True, text=True, check=True).stdout.strip()
    data.unlink()
    builder = repo.TreeBuilder()
    builder.insert("big.bin", pygit2.Oid(hex=oid), pygit2.enums.FileMode.BLOB)
    sha = repo.create_commit("refs/heads/main", AUTHOR, AUTHOR, "big", builder.write(), [])
    return path, str(sha)


def run(repo: Path, sha: str, dest: Path, mode: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", CHILD, str(repo), sha, str(dest), mode],
                         capture_output=True, text=True, check=True, env=env).stdout
    result: dict[str, float] = json.loads(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--random", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="conveyor-blob-bench-") as tmp:
        root = Path(tmp)
        started = time.monotonic()
        repo, sha = make_repo(root, args.mib, args.random)
        made = round(time.monotonic() - started, 2)
        figures: dict[str, object] = {"file_mib": args.mib, "content":
                                      "random" if args.random else "zeros (sparse)",
                                      "repo_made_in_s": made, "loadavg": os.getloadavg()}
        for mode in ("baseline", "loaded", "streamed"):
            dest = root / f"snap-{mode}"
            figures[mode] = run(repo, sha, dest, mode)
            if mode != "baseline":
                size = (dest / "big.bin").stat().st_size
                assert size == args.mib << 20, (mode, size)  # the figure is for a whole file
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
