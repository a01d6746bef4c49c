"""The wildcard folder: names, file reading, and names that must not leave the folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.prompt.wildcards import WildcardLibrary, WildcardLookupError, clean_name


def put(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    put(tmp_path / "w" / "colours.txt", "red\r\ngreen\r\n  # comment\n\n\tblue \nred\n")
    put(tmp_path / "w" / "animals" / "cats.txt", "tabby\n")
    put(tmp_path / "w" / "animals" / "deep" / "fish.txt", "carp\n")
    put(tmp_path / "w" / ".hidden" / "secret.txt", "no\n")
    put(tmp_path / "w" / "notes.md", "not a wildcard\n")
    put(tmp_path / "outside.txt", "outside\n")
    return tmp_path / "w"


def test_names_are_relative_paths_without_txt(root: Path) -> None:
    assert WildcardLibrary(root).names() == ["animals/cats", "animals/deep/fish", "colours"]


def test_lines_are_stripped_deduplicated_sorted(root: Path) -> None:
    found = WildcardLibrary(root).lookup("colours")
    assert found.values == ("blue", "green", "red")
    assert found.origins == ("colours.txt line 5", "colours.txt line 2", "colours.txt line 1")


def test_name_forms(root: Path) -> None:
    lib = WildcardLibrary(root)
    assert lib.lookup("animals\\cats").values == ("tabby",)  # separators normalised as the library does
    assert lib.lookup("/animals//cats/").values == ("tabby",)
    assert lib.lookup("fish").values == ("carp",)  # the "**/name" fallback
    assert lib.lookup("animals/*").values == ("carp", "tabby")  # fnmatch: "*" also crosses "/"
    assert lib.lookup("col?urs").values == ("blue", "green", "red")


def test_names_are_case_sensitive(root: Path) -> None:
    with pytest.raises(WildcardLookupError) as err:
        WildcardLibrary(root).lookup("Colours")
    assert err.value.suggestions == ("colours",)


@pytest.mark.parametrize("name", ["../outside", "animals/../../outside", "..", "a/.."])
def test_dotdot_is_refused(root: Path, name: str) -> None:
    with pytest.raises(WildcardLookupError, match=r"cannot contain '\.\.'"):
        WildcardLibrary(root).lookup(name)


def test_absolute_names_stay_inside(root: Path, tmp_path: Path) -> None:
    with pytest.raises(WildcardLookupError, match="there is no wildcard"):
        WildcardLibrary(root).lookup(str(tmp_path / "outside"))  # becomes a relative name, not found


def test_hidden_folders_and_other_files_are_not_wildcards(root: Path) -> None:
    lib = WildcardLibrary(root)
    for name in (".hidden/secret", "notes"):
        with pytest.raises(WildcardLookupError):
            lib.lookup(name)


def test_symlinks_out_of_the_folder_are_refused(root: Path, tmp_path: Path) -> None:
    os.symlink(tmp_path / "outside.txt", root / "escape.txt")
    outside_dir = tmp_path / "elsewhere"
    put(outside_dir / "thing.txt", "x\n")
    os.symlink(outside_dir, root / "linked")
    os.symlink(root / "animals", root / "alias")  # inside: fine
    os.symlink(root, root / "animals" / "loop")  # a loop back up: walked once
    lib = WildcardLibrary(root)
    names = lib.names()
    assert "escape" not in names and "linked/thing" not in names
    assert lib.lookup("alias/cats").values == ("tabby",)
    with pytest.raises(WildcardLookupError):
        lib.lookup("escape")


def test_missing_folder_has_no_names(tmp_path: Path) -> None:
    lib = WildcardLibrary(tmp_path / "nope")
    assert lib.names() == []
    with pytest.raises(WildcardLookupError, match="there is no wildcard 'x'"):
        lib.lookup("x")


def test_a_file_added_later_is_found(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import core.prompt.wildcards as module

    lib = WildcardLibrary(root, rescan_s=3600)
    assert lib.names()  # index built
    put(root / "new.txt", "fresh\n")
    with pytest.raises(WildcardLookupError):
        lib.lookup("new")  # walked less than MIN_RESCAN_S ago: not again
    monkeypatch.setattr(module, "MIN_RESCAN_S", 0.0)
    assert lib.lookup("new").values == ("fresh",)  # a miss re-walks the folder


def test_an_edited_file_is_read_again(root: Path) -> None:
    lib = WildcardLibrary(root)
    assert lib.lookup("animals/cats").values == ("tabby",)
    path = root / "animals" / "cats.txt"
    path.write_text("tabby\nsiamese\n", encoding="utf-8")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert lib.lookup("animals/cats").values == ("siamese", "tabby")


def test_encoding(root: Path) -> None:
    put(root / "bom.txt", "\ufeffchat\n".encode())
    put(root / "latin.txt", "caf\xe9\n".encode("latin-1"))
    lib = WildcardLibrary(root)
    assert lib.lookup("bom").values == ("chat",)
    with pytest.raises(WildcardLookupError, match=r"latin\.txt is not UTF-8 \(byte 3\)"):
        lib.lookup("latin")


def test_a_file_of_comments_only(root: Path) -> None:
    put(root / "empty.txt", "# nothing\n\n")
    with pytest.raises(WildcardLookupError, match="has no lines"):
        WildcardLibrary(root).lookup("empty")


def test_suggestions_use_the_last_part_too(root: Path) -> None:
    lib = WildcardLibrary(root)
    assert lib.suggest("cat") == ["animals/cats"]
    assert lib.suggest("colors") == ["colours"]


def test_clean_name() -> None:
    assert clean_name("\\a//b/") == "a/b"
    with pytest.raises(WildcardLookupError, match="cannot be empty"):
        clean_name("//")
