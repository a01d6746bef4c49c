"""Names resolve inside their configured folders only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.engine.networks import list_networks, resolve_network_file
from tests.core.engine.networks.conftest import Tag


@pytest.fixture
def lora_dir(tmp_path: Path) -> Path:
    root = tmp_path / "Lora"
    (root / "styles").mkdir(parents=True)
    for rel in ("detail.safetensors", "styles/Watercolor.safetensors", "styles/ink.safetensors", "notes.txt"):
        (root / rel).write_bytes(b"x")
    return root


def test_by_stem_anywhere_below_the_folder(lora_dir: Path) -> None:
    assert resolve_network_file("detail", [lora_dir]) == (lora_dir / "detail.safetensors").resolve()
    assert resolve_network_file("ink", [lora_dir]) == (lora_dir / "styles/ink.safetensors").resolve()


def test_by_relative_path_without_extension(lora_dir: Path) -> None:
    assert resolve_network_file("styles/ink", [lora_dir]).name == "ink.safetensors"
    assert resolve_network_file("styles\\ink", [lora_dir]).name == "ink.safetensors"


def test_exact_case_first_then_any_case(lora_dir: Path) -> None:
    (lora_dir / "watercolor.safetensors").write_bytes(b"y")
    assert resolve_network_file("watercolor", [lora_dir]) == (lora_dir / "watercolor.safetensors").resolve()
    assert (
        resolve_network_file("Watercolor", [lora_dir])
        == (lora_dir / "styles/Watercolor.safetensors").resolve()
    )
    assert resolve_network_file("DETAIL", [lora_dir]).name == "detail.safetensors"


def test_unknown_name_lists_the_closest(lora_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown LoRA 'detial'; closest: detail"):
        resolve_network_file("detial", [lora_dir], what="LoRA")


def test_unknown_name_in_empty_folders_says_so(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no network files \(\.safetensors\) are installed"):
        resolve_network_file("x", [tmp_path / "missing"])


def test_other_extensions_are_not_found(lora_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown"):
        resolve_network_file("notes", [lora_dir])


def test_same_stem_in_two_subfolders_is_ambiguous(lora_dir: Path) -> None:
    (lora_dir / "more").mkdir()
    (lora_dir / "more/ink.safetensors").write_bytes(b"z")
    with pytest.raises(ValueError, match=r"ambiguous; write one of: more/ink, styles/ink"):
        resolve_network_file("ink", [lora_dir])
    assert resolve_network_file("more/ink", [lora_dir]).parent.name == "more"
    assert "more/ink" in list_networks([lora_dir]) and "styles/ink" in list_networks([lora_dir])


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../../etc/passwd", "leaves the LoRA folder"),
        ("styles/../../secret", "leaves the LoRA folder"),
        ("..\\..\\secret", "leaves the LoRA folder"),
        ("/etc/passwd", "absolute path"),
        ("\\\\server\\share\\x", "absolute path"),
        ("C:\\Windows\\x", "absolute path"),
        ("c:x", "absolute path"),
        ("a\x00b", "NUL"),
        ("", "empty"),
    ],
)
def test_escaping_names_are_refused(lora_dir: Path, name: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        resolve_network_file(name, [lora_dir], what="LoRA")


def test_a_real_file_outside_is_unreachable_even_by_its_stem(tmp_path: Path, lora_dir: Path) -> None:
    (tmp_path / "outside.safetensors").write_bytes(b"secret")
    with pytest.raises(ValueError, match="unknown"):
        resolve_network_file("outside", [lora_dir])


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_symlink_leaving_the_folder_is_refused_and_not_listed(tmp_path: Path, lora_dir: Path) -> None:
    secret = tmp_path / "secret.safetensors"
    secret.write_bytes(b"secret")
    (lora_dir / "escape.safetensors").symlink_to(secret)
    with pytest.raises(ValueError, match="link to a file outside the LoRA folder"):
        resolve_network_file("escape", [lora_dir], what="LoRA")
    assert "escape" not in list_networks([lora_dir])


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_symlinked_directory_is_not_followed(tmp_path: Path, lora_dir: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "hidden.safetensors").write_bytes(b"secret")
    (lora_dir / "linked").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="unknown"):
        resolve_network_file("hidden", [lora_dir])
    with pytest.raises(ValueError):
        resolve_network_file("linked/hidden", [lora_dir])


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_symlink_inside_the_folder_is_fine(lora_dir: Path) -> None:
    (lora_dir / "alias.safetensors").symlink_to(lora_dir / "detail.safetensors")
    assert resolve_network_file("alias", [lora_dir]) == (lora_dir / "detail.safetensors").resolve()


def test_several_folders_in_order(tmp_path: Path, lora_dir: Path) -> None:
    second = tmp_path / "more_loras"
    second.mkdir()
    (second / "extra.safetensors").write_bytes(b"x")
    assert resolve_network_file("extra", [lora_dir, second]).parent == second.resolve()
    assert list_networks([lora_dir, second]) == ["detail", "extra", "ink", "Watercolor"]


def test_list_networks_for_autocomplete(lora_dir: Path) -> None:
    assert list_networks([lora_dir]) == ["detail", "ink", "Watercolor"]
    assert list_networks([lora_dir], (".txt",)) == ["notes"]


def test_listing_and_parsing_load_no_torch() -> None:
    """The bot's autocomplete imports this package; it must stay light."""
    import subprocess
    import sys

    code = (
        "import sys, core.engine.networks as n; n.list_networks(['.']); n.networks_key([]);"
        "n.check_extra_networks([], lora_dirs=['.'], hypernetwork_dirs=[]); n.lora_hashes_param([], ['.']);"
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    root = Path(__file__).resolve().parents[4]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- the check before queueing ------------------------------------------------------------------------


def _check(tags, lora_dirs, hypernetwork_dirs=()) -> None:
    from core.engine.networks import check_extra_networks

    check_extra_networks(tags, lora_dirs=lora_dirs, hypernetwork_dirs=hypernetwork_dirs)


@pytest.fixture
def hn_dir(tmp_path: Path) -> Path:
    root = tmp_path / "hypernetworks"
    root.mkdir()
    (root / "anime_hn.pt").write_bytes(b"x")
    return root


@pytest.mark.parametrize(
    ("tag", "why"),
    [
        (Tag("lora", ("../../etc/passwd", "1")), r"leaves the LoRA folder"),
        (Tag("lyco", ("/etc/passwd",)), r"absolute path"),
        (Tag("lyco", ("watercolour",)), r"unknown LoRA 'watercolour'; closest: Watercolor"),
        (Tag("lora", ("a" * 5000,)), r"too long for a file name \(5000 characters\)"),
        (Tag("lora", ("日" * 100,)), r"too long for a file name"),  # 300 bytes: ENAMETOOLONG before
        (Tag("lora", ("deta\nil",)), r"control character"),
        (Tag("lora", ("detail", "lots")), r"'lots' is not a number"),
        (Tag("hypernet", ("../anime_hn",)), r"leaves the hypernetwork folder"),
        (Tag("hypernet", ("anime",)), r"unknown hypernetwork 'anime'; closest: anime_hn"),
        (Tag("hypernet", ("h" * 300, "0.5")), r"too long"),
    ],
)
def test_bad_extra_network_names_are_refused_with_the_reason(lora_dir, hn_dir, tag, why) -> None:
    with pytest.raises(ValueError, match=why):
        _check([Tag("lora", ("detail", "0.5")), tag], [lora_dir], [hn_dir])


def test_names_are_checked_when_the_folders_do_not_exist(tmp_path: Path) -> None:
    missing = [tmp_path / "models" / "Lora"]
    for tag, why in [
        (Tag("lora", ("../../etc/passwd", "1")), "leaves the LoRA folder"),
        (Tag("lyco", ("anything",)), r"no LoRA files \(\.safetensors\) are installed"),
        (Tag("lora", ("x" * 4000,)), "too long"),
        (Tag("hypernet", ("h",)), r"no hypernetwork files \(\.pt\) are installed"),
    ]:
        with pytest.raises(ValueError, match=why):
            _check([tag], missing, [tmp_path / "hypernetworks"])


def test_known_names_and_other_kinds_pass(lora_dir, hn_dir) -> None:
    tags = [
        Tag("lora", ("detail", "0.5")),
        Tag("lyco", ("styles/ink",), {"unet": "0.3"}),
        Tag("hypernet", ("anime_hn", "0.4")),
        Tag("img", ("../../anything",)),  # not ours: skipped, as A1111 skips it
    ]
    _check(tags, [lora_dir], [hn_dir])
    _check([], [], [])
