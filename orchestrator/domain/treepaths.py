"""Which names a Git tree entry may have: what ``git fsck`` rejects, refused here too.

A commit is untrusted input and a tree entry's name is just bytes inside a Git object: a
crafted tree can name an entry ``../../x``, ``/etc/cron.d/x``, ``.git`` (or an alias of it that
a case-insensitive or NTFS filesystem treats as ``.git``), or hold two entries of one name (a
symlink and then a directory "through" it). ``entry_problem`` says what is wrong with one name,
in words; the walker in ``orchestrator.adapters.git_tree`` applies it to every entry of a
commit before anything is written or announced.
"""

from __future__ import annotations

# characters HFS+ ignores when comparing names (git's is_hfs_dotgit): ".g\u200cit" == ".git"
_HFS_IGNORED = frozenset(
    [chr(c) for c in range(0x200C, 0x2010)] + [chr(c) for c in range(0x202A, 0x202F)]
    + [chr(c) for c in range(0x206A, 0x2070)] + ["\ufeff"])
_DOTGIT_ALIASES = frozenset({".git", "git~1"})


def _is_dotgit(name: str) -> bool:
    """``.git`` as a case-insensitive, HFS+ or NTFS filesystem would read ``name``."""
    folded = "".join(c for c in name if c not in _HFS_IGNORED).lower()
    # NTFS drops trailing dots and spaces and reads "name:stream" as "name"
    base = folded.split(":", 1)[0].rstrip(". ")
    return base in _DOTGIT_ALIASES


def entry_problem(name: bytes) -> str | None:
    """Why a tree entry may not be named ``name``, or None when the name is fine."""
    if not name:
        return "an empty name"
    if b"\0" in name:
        return "a NUL byte in the name"
    if b"/" in name:
        return "a '/' in the name (an entry is one path component)"
    if name in (b".", b".."):
        return f"the name {name.decode()!r} (it leaves its directory)"
    text = name.decode("utf-8", errors="replace")
    if _is_dotgit(text):
        return f"the name {text!r} (an alias of .git)"
    return None
