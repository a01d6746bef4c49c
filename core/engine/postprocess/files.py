"""Model files of the post-processing models, by name, inside their configured folders only.

Upscalers, face restorers, detectors and taggers are listed the way A1111 lists its upscalers: every
file under the configured folders (recursively), named by its file stem. A name from a user is looked up
in that listing, never joined onto a path, so it cannot leave the folders. Pickle files (``.pth``,
``.pt``, ``.ckpt``) are listed but refused when loaded unless the operator allows pickles.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path

from core.engine.models import PICKLE_HELP, ModelError

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt")
WEIGHT_SUFFIXES = SAFE_SUFFIXES + PICKLE_SUFFIXES


class PostprocessError(ModelError):
    """An upscaler, face restorer, detector or tagger is unknown, missing, refused or unusable.

    ``str(exc)`` is safe to show a user: it names what the server lacks, never a path.
    """


def list_model_files(folders: Iterable[str], suffixes: tuple[str, ...]) -> dict[str, Path]:
    """``{stem: file}`` for every file with one of ``suffixes`` under ``folders`` (recursively).

    The first folder wins when two files share a stem (then the shortest path, then sorted order), so a
    listing is stable between calls. Files whose resolved path leaves their folder (symlinks) are skipped.
    """
    found: dict[str, Path] = {}
    for folder in folders:
        base = Path(folder).expanduser()
        if not base.is_dir():
            continue
        root = base.resolve()
        candidates = [p for p in base.rglob("*") if p.is_file() and p.suffix.lower() in suffixes]
        for path in sorted(candidates, key=lambda p: (len(p.parts), str(p))):
            resolved = path.resolve()
            if not resolved.is_relative_to(root):
                continue
            found.setdefault(path.stem, resolved)
    return found


def unknown_name_error(what: str, name: str, known: Iterable[str], folders: Iterable[str]) -> PostprocessError:
    """The error for a name that is not in the listing: the closest names, or what the server lacks."""
    known = sorted(known)
    if not known:
        where = ", ".join(folders) or "(no folder configured)"
        return PostprocessError(f"this server has no {what} models installed (looked in {where})")
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    listing = ", ".join(close or known[:20]) + (", …" if not close and len(known) > 20 else "")
    label = "closest" if close else "known"
    return PostprocessError(f"unknown {what} {name!r} ({label}: {listing})")


def check_weights_file(path: Path, allow_pickle: bool) -> None:
    """Refuse pickle files unless the operator allows them (then only ``weights_only`` loading is used)."""
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise PostprocessError(PICKLE_HELP.format(name=path.name, suffix=suffix, stem=path.stem))
    if suffix not in WEIGHT_SUFFIXES:
        raise PostprocessError(f"{path.name}: not a weights file (expected .safetensors)")
