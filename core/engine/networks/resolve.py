"""Find a network file by the name a prompt gives, inside the configured folders only.

A name never becomes a path. We list the files below each configured folder and match the name
against them, A1111-style: by file stem (``<lora:detail:1>`` finds ``Lora/styles/detail.safetensors``),
or by the path relative to the folder without its extension (``<lora:styles/detail:1>``), exact case
first, then ignoring case. Names that look like paths out of the folder (``..``, absolute paths,
drive letters, NUL), names with control characters and over-long names are refused before any
lookup, and files whose real location (after symlinks) lies outside their folder are never listed or
loaded. :func:`check_extra_networks` applies all of it to a prompt's tags before a job is queued.
This module imports no torch.
"""

from __future__ import annotations

import difflib
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from core.engine.networks.spec import HYPERNET_KINDS, LORA_KINDS, ExtraNetworkLike, parse_networks

_DRIVE = re.compile(r"^[A-Za-z]:")
LORA_EXTS = (".safetensors",)
HYPERNETWORK_EXTS = (".pt",)
NAME_MAX_CHARS = 200  # longer than any real file's name with its sub-folders


@dataclass(frozen=True)
class NetworkFile:
    """One loadable file below a configured folder."""

    path: Path  # the real (resolved) location, inside ``root``
    root: Path  # the resolved configured folder
    relative: str  # path below the folder, POSIX separators, without extension

    @property
    def stem(self) -> str:
        return PurePosixPath(self.relative).name


def check_network_name(name: str, what: str = "network") -> str:
    """Refuse names that try to leave the folder or no file can have; return it with ``\\`` as ``/``."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"empty {what} name")
    # 240 bytes a part leaves room for the extension within the file systems' 255.
    if len(name) > NAME_MAX_CHARS or any(len(part.encode()) > 240 for part in re.split(r"[/\\]", name)):
        raise ValueError(f"{what} name {name[:40]!r}… is too long for a file name ({len(name)} characters)")
    if "\x00" in name:
        raise ValueError(f"{what} name {name!r} contains a NUL character")
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise ValueError(f"{what} name {name!r} contains a control character")
    posix = name.replace("\\", "/")
    if posix.startswith("/") or _DRIVE.match(posix):
        raise ValueError(f"{what} name {name!r} is an absolute path; use a name from the {what} folder")
    if ".." in posix.split("/"):
        raise ValueError(f"{what} name {name!r} leaves the {what} folder ('..' is not allowed)")
    return posix


def _is_inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def list_network_files(dirs: Iterable[str | os.PathLike[str]], exts: Sequence[str]) -> list[NetworkFile]:
    """All files with one of ``exts`` below ``dirs`` whose real location stays inside their folder.

    Missing folders are skipped. Symlinked sub-folders are not followed; a symlinked file is kept
    only when its target lies inside the same folder. Sorted by folder order, then relative path.
    """
    lowered = tuple(e.lower() for e in exts)
    found: list[NetworkFile] = []
    for folder in dirs:
        root = Path(folder)
        if not root.is_dir():
            continue
        root = root.resolve()
        here: list[NetworkFile] = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames.sort()
            for filename in filenames:
                if not filename.lower().endswith(lowered):
                    continue
                candidate = Path(dirpath) / filename
                real = candidate.resolve()
                if not _is_inside(real, root) or not real.is_file():
                    continue
                rel = candidate.relative_to(root).as_posix()
                ext = next(e for e in lowered if rel.lower().endswith(e))
                here.append(NetworkFile(path=real, root=root, relative=rel[: -len(ext)]))
        found.extend(sorted(here, key=lambda f: f.relative))
    return found


def list_networks(
    dirs: Iterable[str | os.PathLike[str]], exts: Sequence[str] = (".safetensors",)
) -> list[str]:
    """Names for autocomplete: each file's stem, or its relative path where two stems collide."""
    files = list_network_files(dirs, exts)
    counts: dict[str, int] = {}
    for f in files:
        counts[f.stem] = counts.get(f.stem, 0) + 1
    names = [f.stem if counts[f.stem] == 1 else f.relative for f in files]
    return sorted(dict.fromkeys(names), key=str.lower)


def _refuse_escaping_link(
    posix: str, dirs: Iterable[str | os.PathLike[str]], exts: Sequence[str], what: str
) -> None:
    """Say so plainly when the name is a file in the folder whose link target leaves it."""
    for folder in dirs:
        root = Path(folder)
        if not root.is_dir():
            continue
        for ext in ("", *exts):
            candidate = root / (posix + ext)
            if candidate.is_symlink() or candidate.exists():
                real = candidate.resolve()
                if not _is_inside(real, root.resolve()):
                    raise ValueError(
                        f"{what} {posix!r} is a link to a file outside the {what} folder; refused"
                    )


def resolve_network_file(
    name: str,
    dirs: Iterable[str | os.PathLike[str]],
    exts: Sequence[str] = (".safetensors",),
    *,
    what: str = "network",
) -> Path:
    """The file a prompt's ``name`` refers to, or ``ValueError`` (with the closest known names)."""
    posix = check_network_name(name, what)
    dirs = list(dirs)
    files = list_network_files(dirs, exts)
    for fold in (False, True):
        key = posix.lower() if fold else posix

        def norm(s: str, fold: bool = fold) -> str:
            return s.lower() if fold else s

        by_path = [f for f in files if norm(f.relative) == key]
        if by_path:
            return by_path[0].path
        by_stem = [f for f in files if norm(f.stem) == key]
        if len(by_stem) == 1:
            return by_stem[0].path
        if len(by_stem) > 1:
            options = ", ".join(sorted(f.relative for f in by_stem))
            raise ValueError(f"{what} name {name!r} is ambiguous; write one of: {options}")
    _refuse_escaping_link(posix, dirs, exts, what)
    known = list_networks(dirs, exts)
    if not known:  # folders are not named: this message may reach a Discord user
        raise ValueError(f"unknown {what} {name!r}: no {what} files ({'/'.join(exts)}) are installed")
    lowered = {k.lower(): k for k in known}
    close = difflib.get_close_matches(posix.lower(), list(lowered), n=5, cutoff=0.4)
    hint = ", ".join(lowered[c] for c in close) if close else ", ".join(known[:5])
    label = "closest" if close else "known"
    raise ValueError(f"unknown {what} {name!r}; {label}: {hint}")


def check_extra_networks(
    networks: Iterable[ExtraNetworkLike],
    *,
    lora_dirs: Iterable[str | os.PathLike[str]],
    hypernetwork_dirs: Iterable[str | os.PathLike[str]],
) -> None:
    """Refuse a prompt's ``<lora>``/``<lyco>``/``<hypernet>`` tags that the engine would refuse.

    The one check before queueing, the same for every kind: the arguments read as A1111 reads them,
    and each name is a safe name of a file in its configured folders, whether or not the folders
    exist (no folder means nothing is installed). ``ValueError`` says which tag and why, with the
    closest names. Tags of other kinds are skipped, as A1111 and the engine skip them.
    """
    networks = list(networks)
    parse_networks(networks)
    lora_dirs, hypernetwork_dirs = list(lora_dirs), list(hypernetwork_dirs)
    for net in networks:
        if net.kind in LORA_KINDS:
            resolve_network_file(net.positional[0], lora_dirs, LORA_EXTS, what="LoRA")
        elif net.kind in HYPERNET_KINDS:
            resolve_network_file(net.positional[0], hypernetwork_dirs, HYPERNETWORK_EXTS, what="hypernetwork")
