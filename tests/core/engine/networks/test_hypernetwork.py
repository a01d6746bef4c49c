"""A1111 hypernetworks: file layout, effect on attention keys/values, clean removal, refusals."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from core.engine.networks import activate_networks
from tests.core.engine.networks.conftest import (
    assert_bit_identical,
    hypernet,
    kohya_tensors,
    lora,
    peft_lora,
    snapshot,
    write_safetensors,
)


def _sequential_sd(sizes: list[tuple[int, int]], indices: list[int], seed: int) -> OrderedDict:
    """State dict of A1111's ``HypernetworkModule.linear`` with Linear layers at ``indices``."""
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    for (n_in, n_out), index in zip(sizes, indices, strict=True):
        sd[f"linear.{index}.weight"] = torch.randn(n_out, n_in, generator=g) * 0.2
        sd[f"linear.{index}.bias"] = torch.randn(n_out, generator=g) * 0.1
    return sd


def a1111_hypernetwork(widths: list[int], *, seed: int = 0, **options) -> dict:
    """What A1111's ``Hypernetwork.save`` writes for layer_structure [1, 2, 1] with relu, no dropout."""
    data: dict = {}
    for n, width in enumerate(widths):
        sizes = [(width, width * 2), (width * 2, width)]
        # relu after the first Linear only (activate_output=False): Linear, ReLU, Linear -> 0, 2
        data[width] = (
            _sequential_sd(sizes, [0, 2], seed + 2 * n),
            _sequential_sd(sizes, [0, 2], seed + 2 * n + 1),
        )
    data.update(
        {
            "step": 1000,
            "name": "tiny",
            "layer_structure": [1, 2, 1],
            "activation_func": "relu",
            "is_layer_norm": False,
            "weight_initialization": "Normal",
            "use_dropout": False,
            "sd_checkpoint": "abc123",
            "sd_checkpoint_name": "v1-5",
            "activate_output": False,
            "last_layer_dropout": False,
        }
    )
    data.update(options)
    return data


def _forward(sd: dict, x: torch.Tensor, relu_at: int | None = 1) -> torch.Tensor:
    """Independent A1111 reference for [1, 2, 1]: x + W2 act(W1 x + b1) + b2."""
    keys = sorted({k.split(".")[1] for k in sd}, key=int)
    h = x @ sd[f"linear.{keys[0]}.weight"].T + sd[f"linear.{keys[0]}.bias"]
    if relu_at is not None:
        h = torch.relu(h)
    return h @ sd[f"linear.{keys[1]}.weight"].T + sd[f"linear.{keys[1]}.bias"]


@pytest.fixture
def hn_dir(tmp_path: Path) -> Path:
    d = tmp_path / "hypernetworks"
    d.mkdir()
    return d


def _save(path: Path, data) -> Path:
    torch.save(data, path)
    return path


def _capture(module) -> tuple[dict, object]:
    seen: dict = {}

    def hook(_m, args, out):
        seen["in"], seen["out"] = args[0].detach().clone(), out.detach().clone()

    return seen, module.register_forward_hook(hook)


def _activate(unet, text_encoder, hn_dir, *tags):
    return activate_networks(
        unet=unet, text_encoders=[text_encoder], networks=list(tags), hypernetwork_dirs=[hn_dir]
    )


def test_cross_attention_keys_and_values_get_the_hypernetwork(
    unet, text_encoder, hn_dir, run_unet, unet_inputs
) -> None:
    data = a1111_hypernetwork([32])
    _save(hn_dir / "tiny.pt", data)
    attn2 = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    context = unet_inputs[2]
    base = run_unet(unet)
    before = snapshot(unet)
    seen_k, hk = _capture(attn2.to_k)
    seen_v, hv = _capture(attn2.to_v)
    try:
        with _activate(unet, text_encoder, hn_dir, hypernet("tiny", "0.5")) as active:
            out = run_unet(unet)
            # width 32: attn1 + attn2 in down_blocks.0 and both up_blocks.1 attentions, attn2 of mid
            assert active.hooked_attentions == 7
            assert not attn2.to_q._forward_pre_hooks  # queries are not touched
    finally:
        hk.remove(), hv.remove()
    k_sd, v_sd = data[32]
    torch.testing.assert_close(seen_k["in"], context + _forward(k_sd, context) * 0.5, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(seen_v["in"], context + _forward(v_sd, context) * 0.5, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(seen_k["out"], attn2.to_k(seen_k["in"]), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(out, base, atol=1e-4)
    assert torch.equal(run_unet(unet), base)
    assert_bit_identical(unet, before)
    assert all(not m._forward_pre_hooks for m in unet.modules())


def test_self_attention_too_when_the_width_matches_as_in_a1111(unet, text_encoder, hn_dir) -> None:
    _save(hn_dir / "wide.pt", a1111_hypernetwork([64]))  # only the 64-wide mid block's attn1
    attn1 = unet.mid_block.attentions[0].transformer_blocks[0].attn1
    with _activate(unet, text_encoder, hn_dir, hypernet("wide")) as active:
        assert active.hooked_attentions == 1
        assert attn1.to_k._forward_pre_hooks and attn1.to_v._forward_pre_hooks
        assert not unet.mid_block.attentions[0].transformer_blocks[0].attn2.to_k._forward_pre_hooks


def test_multiplier_zero_changes_nothing(unet, text_encoder, hn_dir, run_unet) -> None:
    _save(hn_dir / "tiny.pt", a1111_hypernetwork([32, 64]))
    base = run_unet(unet)
    with _activate(unet, text_encoder, hn_dir, hypernet("tiny", "0")):
        assert torch.equal(run_unet(unet), base)


def test_two_hypernetworks_chain_in_prompt_order(unet, text_encoder, hn_dir, unet_inputs) -> None:
    a, b = a1111_hypernetwork([32], seed=10), a1111_hypernetwork([32], seed=20)
    _save(hn_dir / "a.pt", a), _save(hn_dir / "b.pt", b)
    attn2 = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    seen, handle = _capture(attn2.to_k)
    sample, t, context = unet_inputs
    try:
        with (
            torch.no_grad(),
            _activate(unet, text_encoder, hn_dir, hypernet("a", "0.7"), hypernet("b", "1.2")),
        ):
            unet(sample, t, encoder_hidden_states=context)
    finally:
        handle.remove()
    after_a = context + _forward(a[32][0], context) * 0.7
    expected = after_a + _forward(b[32][0], after_a) * 1.2
    torch.testing.assert_close(seen["in"], expected, atol=1e-5, rtol=1e-5)


def test_old_linear1_linear2_files_and_layer_norm_dropout_layouts(unet, text_encoder, hn_dir) -> None:
    g = torch.Generator().manual_seed(1)
    old = {
        "linear1.weight": torch.randn(64, 32, generator=g),
        "linear1.bias": torch.zeros(64),
        "linear2.weight": torch.randn(32, 64, generator=g),
        "linear2.bias": torch.zeros(32),
    }
    _save(hn_dir / "old.pt", {32: (old, dict(old))})  # oldest files: no metadata at all
    # relu + layer norm + dropout: Linear(0) ReLU(1) LayerNorm(2) Dropout(3) Linear(4) LayerNorm(5)
    ln = {
        **_sequential_sd([(32, 64), (64, 32)], [0, 4], 2),
        "linear.2.weight": torch.ones(64),
        "linear.2.bias": torch.zeros(64),
        "linear.5.weight": torch.ones(32),
        "linear.5.bias": torch.zeros(32),
    }
    meta = {"activation_func": "relu", "is_layer_norm": True, "use_dropout": True, "last_layer_dropout": True}
    _save(
        hn_dir / "ln.pt", {32: (ln, dict(ln)), "layer_structure": [1, 2, 1], "activate_output": False, **meta}
    )
    for name in ("old", "ln"):
        with _activate(unet, text_encoder, hn_dir, hypernet(name)) as active:
            assert active.hooked_attentions == 7


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2, 3], "expected a dict"),
        ({"name": "x", "step": 3}, "no layers"),
        ({32: "nope"}, "not a pair of state dicts"),
        ({32: ({"linear.0.weight": torch.zeros(3, 3)}, {})}, "does not match its layer_structure"),
        ({32: ({}, {}), "layer_structure": [2, 1]}, "must start and end with 1"),
        ({32: ({}, {}), "activation_func": "frobnicate"}, "unknown activation function"),
        ({32: ({}, {}), "activation_func": "multiheadattention"}, "cannot build its layers"),
        ({32: ({}, {}), "layer_structure": [1, 0.001, 1]}, "gives an empty layer for width 32"),
    ],
)
def test_layouts_we_cannot_read_get_clear_errors(unet, text_encoder, hn_dir, data, message) -> None:
    _save(hn_dir / "bad.pt", data)
    with pytest.raises(ValueError, match=message), _activate(unet, text_encoder, hn_dir, hypernet("bad")):
        pass


class NotAllowed:  # a pickled custom class: weights_only=True must refuse to build it
    def __init__(self) -> None:
        self.x = 1


def test_pickles_needing_code_and_garbage_are_refused(unet, text_encoder, hn_dir) -> None:
    _save(hn_dir / "code.pt", {32: NotAllowed()})
    (hn_dir / "garbage.pt").write_bytes(b"this is not a torch file")
    before = snapshot(unet)
    for name in ("code", "garbage"):
        with (
            pytest.raises(ValueError, match=rf"cannot read hypernetwork {name}\.pt safely"),
            _activate(unet, text_encoder, hn_dir, hypernet(name)),
        ):
            pass
    assert_bit_identical(unet, before)


def test_hypernetwork_for_other_widths_is_refused(unet, text_encoder, hn_dir) -> None:
    _save(hn_dir / "sd15.pt", a1111_hypernetwork([768, 1280]))
    with (
        pytest.raises(
            ValueError,
            match=r"fits no attention layer of this model \(it has layers for widths \[768, 1280\]\)",
        ),
        _activate(unet, text_encoder, hn_dir, hypernet("sd15")),
    ):
        pass
    assert all(not m._forward_pre_hooks for m in unet.modules())


def test_unknown_and_escaping_names(unet, text_encoder, hn_dir) -> None:
    _save(hn_dir / "anime_style.pt", a1111_hypernetwork([32]))
    with (
        pytest.raises(ValueError, match=r"unknown hypernetwork 'anime'; closest: anime_style"),
        _activate(unet, text_encoder, hn_dir, hypernet("anime")),
    ):
        pass
    with (
        pytest.raises(ValueError, match="leaves the hypernetwork folder"),
        _activate(unet, text_encoder, hn_dir, hypernet("../x")),
    ):
        pass


def test_lora_and_hypernetwork_in_one_job_then_plain_job_is_bit_identical(
    tmp_path, unet, text_encoder, hn_dir, run_unet, run_te
) -> None:
    _save(hn_dir / "tiny.pt", a1111_hypernetwork([32, 64]))
    _, sd = peft_lora(unet, ["to_k", "conv2"], seed=9)
    write_safetensors(tmp_path / "Lora" / "style.safetensors", kohya_tensors(sd, "lora_unet_", alpha=4.0))
    plain_unet, plain_te = run_unet(unet), run_te(text_encoder)
    before = snapshot(unet), snapshot(text_encoder)
    with activate_networks(
        unet=unet,
        text_encoders=[text_encoder],
        networks=[lora("style", "0.8"), hypernet("tiny", "0.6")],
        lora_dirs=[tmp_path / "Lora"],
        hypernetwork_dirs=[hn_dir],
    ) as active:
        assert active.merged_weights > 0 and active.hooked_attentions > 0
        assert not torch.allclose(run_unet(unet), plain_unet, atol=1e-4)
    assert torch.equal(run_unet(unet), plain_unet)
    assert torch.equal(run_te(text_encoder), plain_te)
    assert_bit_identical(unet, before[0])
    assert_bit_identical(text_encoder, before[1])


def test_networks_are_activated_grouped_by_kind_in_a1111_order(tmp_path, unet, text_encoder, hn_dir) -> None:
    # a <lora:foo:1> b <hypernet:h:0.3> c <lora:bar:0.2>  ->  lora foo, lora bar, hypernet h
    _save(hn_dir / "h.pt", a1111_hypernetwork([32, 64]))
    for seed, name in ((9, "foo"), (10, "bar")):
        _, sd = peft_lora(unet, ["to_k"], seed=seed)
        write_safetensors(
            tmp_path / "Lora" / f"{name}.safetensors", kohya_tensors(sd, "lora_unet_", alpha=4.0)
        )

    def order(*tags) -> list[tuple[str, str]]:
        with activate_networks(
            unet=unet,
            text_encoders=[text_encoder],
            networks=list(tags),
            lora_dirs=[tmp_path / "Lora"],
            hypernetwork_dirs=[hn_dir],
        ) as active:
            assert [name for name, _ in active.loras] == [n for kind, n in active.activated if kind == "lora"]
            return active.activated

    assert order(lora("foo", "1"), hypernet("h", "0.3"), lora("bar", "0.2")) == [
        ("lora", "foo"),
        ("lora", "bar"),
        ("hypernet", "h"),
    ]
    assert order(hypernet("h"), lora("bar"), lora("foo")) == [
        ("hypernet", "h"),
        ("lora", "bar"),
        ("lora", "foo"),
    ]
