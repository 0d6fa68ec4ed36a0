"""Evaluate jsonnet in a boxed subprocess (run as a script: stdlib and ``_jsonnet`` only).

stdin: JSON ``{root, files: [{filename, snippet}], libs, ext_vars, ext_codes, tla_vars,
tla_codes, max_file_bytes}`` with ``filename`` and ``libs`` relative to ``root`` (the cwd).
stdout: JSON ``{"results": [...]}`` or ``{"error": "..."}``. Imports resolve only inside
``root``: absolute paths, ``..`` escapes and symlinks leaving it are refused by name.
"""

import json
import os
import sys

import _jsonnet


def main() -> None:
    request = json.load(sys.stdin)
    root = os.path.realpath(request["root"])
    libs = request["libs"]
    limit = request["max_file_bytes"]
    cache = {}

    def inside(path: str) -> bool:
        return path == root or path.startswith(root + os.sep)

    def callback(directory: str, rel: str) -> tuple[str, bytes]:
        if os.path.isabs(rel):
            raise RuntimeError(f"import {rel!r}: absolute paths are refused")
        for base in (directory, *libs):
            candidate = os.path.normpath(os.path.join(base, rel))
            if candidate.startswith("..") or os.path.isabs(candidate):
                raise RuntimeError(f"import {rel!r}: points outside the repository; refused")
            real = os.path.realpath(os.path.join(root, candidate))
            if not inside(real):
                if os.path.lexists(os.path.join(root, candidate)):
                    raise RuntimeError(f"import {rel!r}: {candidate} is a symlink that points "
                                       "outside the repository; refused")
                continue
            if not os.path.isfile(real):
                continue
            if candidate not in cache:
                size = os.path.getsize(real)
                if size > limit:
                    raise RuntimeError(f"import {rel!r}: {candidate} is {size} bytes, larger "
                                       f"than the limit of {limit} bytes; refused")
                with open(real, "rb") as handle:
                    cache[candidate] = handle.read()
            return candidate, cache[candidate]
        raise RuntimeError(f"import {rel!r}: not found")

    results = []
    try:
        for item in request["files"]:
            text = _jsonnet.evaluate_snippet(
                item["filename"], item["snippet"], import_callback=callback,
                ext_vars=request["ext_vars"], ext_codes=request["ext_codes"],
                tla_vars=request["tla_vars"], tla_codes=request["tla_codes"])
            results.append(json.loads(text))
    except RuntimeError as exc:
        json.dump({"error": str(exc)}, sys.stdout)
        return
    json.dump({"results": results}, sys.stdout)


if __name__ == "__main__":
    main()
