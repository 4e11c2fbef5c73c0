"""Checkpoint converters against independent oracles: open_clip and timm forwards, transformers for big_vision.

Models are built with random weights at the released widths, with 2 layers per tower (layer indexing is then
exercised) and, for the open_clip text towers, a 512-token vocabulary (the embedding is a plain copy; a full
256k one only costs time). open_clip and timm compute the exact GELU in the SigLIP 1 text towers and in the
timm towers not built with `gelu_tanh`, where siglip (and transformers, and big_vision) use its tanh
approximation: the as-is comparison then has a tolerance of 2e-3 (it is that approximation, propagated
through 2 layers and the MAP head); with the oracle's GELUs switched to tanh the same conversion agrees to 2e-5
in float32 and 1e-10 in float64, which shows that the rest is rounding.

Back to open_clip, the user's path is also run at the released size: open_clip builds the model from its own
configuration by name and loads our file strictly. big_vision npz files (SigLIP, and SigLIP 2 NaFlex, which
open_clip 3.3 does not have) are compared with transformers models placed by this file's own mapping.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import open_clip
import pytest
import timm
import torch
import transformers

from siglip import SiglipModel, SiglipVisionModel
from siglip.core.convert import ConversionError, convert, detect, to_open_clip
from siglip.core.convert import open_clip as oc_table
from siglip.core.convert import timm as timm_table
from siglip.core.convert._rules import Tensors
from siglip.tools.cli import main

DEPTH = 2
TIMM_DEPTH = 1  # timm towers at every released resolution (up to 896 px): one block keeps the file bounded
VOCAB = 512
OPEN_CLIP_NAMES = sorted(n for n in open_clip.list_models() if "SigLIP" in n)
TIMM_NAMES = sorted(timm.list_models("vit_*_siglip_*"))
GELU_TOLERANCE = (
    2e-3  # exact GELU (open_clip/timm) vs its tanh approximation (siglip, transformers, big_vision)
)
FP32_TOLERANCE = 2e-5
FP64_TOLERANCE = 1e-10
FP64_NAMES = ("ViT-B-16-SigLIP", "ViT-L-16-SigLIP-256", "ViT-SO400M-14-SigLIP", "ViT-gopt-16-SigLIP2-256")
PARITY: dict[str, dict[str, float]] = {}  # printed at the end: the figures of the closing note


@pytest.fixture(autouse=True)
def _free_disk(tmp_path):
    """Checkpoints at released widths are hundreds of MB each (tens of GB over the file): each test's go
    when it ends, instead of staying in pytest's kept temporary folders."""
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def _print_parity():
    yield
    if PARITY:
        print("\nparity (max abs diff):\n" + json.dumps(PARITY, indent=1))


def _timm_depth(depth: int):
    create = timm.create_model

    def reduced(*args, **kwargs):
        kwargs.setdefault("depth", depth)
        return create(*args, **kwargs)

    return mock.patch.object(timm, "create_model", reduced)


def _open_clip_model(name: str, vision_depth: int = DEPTH) -> torch.nn.Module:
    text_cfg = copy.deepcopy(open_clip.get_model_config(name)["text_cfg"])
    text_cfg.update(layers=DEPTH, vocab_size=VOCAB)
    torch.manual_seed(0)
    with _timm_depth(vision_depth):
        model = open_clip.create_model(name, pretrained=None, text_cfg=text_cfg)
    with torch.no_grad():  # open_clip starts some tensors at constants (zeros, ones): make every one count
        for tensor in model.state_dict().values():
            tensor.add_(torch.randn_like(tensor) * 0.02)
    return model.eval()


def _tanh_gelu(model: torch.nn.Module) -> bool:
    """Switch the oracle's exact GELUs to the tanh approximation; whether there were any."""
    changed = False
    for module in model.modules():
        if isinstance(module, torch.nn.GELU) and module.approximate == "none":
            module.approximate, changed = "tanh", True
    return changed


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def _open_clip_outputs(model, pixels, ids):
    with torch.no_grad():
        image = model.encode_image(pixels, normalize=True)
        text = model.encode_text(ids, normalize=True)
        logits = model.logit_scale.exp() * image @ text.T + model.logit_bias
    return image, text, logits


def _siglip_outputs(model, pixels, ids):
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels)
    return out.image_embeds, out.text_embeds, out.logits_per_image


def _diffs(ours, theirs) -> dict[str, float]:
    return {k: _max_diff(a, b) for k, a, b in zip(("image", "text", "logits"), ours, theirs, strict=True)}


# --- open_clip --------------------------------------------------------------------------------------------


def test_open_clip_table_matches_open_clip():
    """Our table of open_clip's SigLIP configurations (used to name and rebuild them) equals open_clip's own."""
    assert set(OPEN_CLIP_NAMES) == set(oc_table.NAMES)
    for name in OPEN_CLIP_NAMES:
        cfg, arch = open_clip.get_model_config(name), oc_table.arch(name)
        text, config = cfg["text_cfg"], arch.config()
        assert arch.tower.name == cfg["vision_cfg"]["timm_model_name"], name
        assert config.vision_config.image_size == cfg["vision_cfg"]["image_size"], name
        assert arch.embed_dim == cfg["embed_dim"] == config.text_config.projection_size, name
        got = config.text_config
        assert (got.hidden_size, got.num_attention_heads, got.num_hidden_layers) == (
            text["width"], text["heads"], text["layers"]), name  # fmt: skip
        assert got.intermediate_size == int(text["width"] * text.get("mlp_ratio", 4.0)), name
        assert (got.vocab_size, got.max_position_embeddings) == (
            text["vocab_size"],
            text["context_length"],
        ), name
        assert arch.text_projection == (text.get("proj_type") != "none"), name
        assert arch.exact_text_gelu == (text.get("act_kwargs", {}).get("approximate") != "tanh"), name


def test_timm_table_matches_timm():
    """Every timm SigLIP tower's width, depth, heads, MLP, patch, image size and GELU as our table has them."""
    assert set(TIMM_NAMES) == set(timm_table.TOWERS)
    for name in TIMM_NAMES:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
        tower = timm_table.tower(name)
        block = model.blocks[0]
        assert (model.embed_dim, len(model.blocks), block.attn.num_heads, block.mlp.fc1.out_features) == (
            tower.width, tower.depth, tower.heads, tower.mlp), name  # fmt: skip
        assert (model.patch_embed.patch_size[0], model.patch_embed.img_size[0]) == (
            tower.patch,
            tower.image,
        ), name
        assert (model.attn_pool is not None) == tower.map_head, name
        exact = isinstance(block.mlp.act, torch.nn.GELU) and block.mlp.act.approximate == "none"
        assert exact == tower.exact_gelu, name


@pytest.mark.parametrize("name", OPEN_CLIP_NAMES)
def test_open_clip_parity(name, tmp_path):
    oracle = _open_clip_model(name, vision_depth=1)  # the timm tower tests cover vision layer indexing
    file = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(oracle.state_dict(), file)
    architecture = convert(file, tmp_path / "out")
    assert architecture.family == "open_clip"
    ours = SiglipModel.from_pretrained(tmp_path / "out")

    size, context = oracle.visual.image_size[0], oracle.text.context_length
    torch.manual_seed(1)
    pixels, ids = torch.randn(1, 3, size, size), torch.randint(0, VOCAB, (2, context))
    figures = {
        "fp32 as is": max(
            _diffs(_siglip_outputs(ours, pixels, ids), _open_clip_outputs(oracle, pixels, ids)).values()
        )
    }
    exact_gelu = _tanh_gelu(oracle)
    if exact_gelu:
        aligned = _diffs(_siglip_outputs(ours, pixels, ids), _open_clip_outputs(oracle, pixels, ids))
        figures["fp32 tanh GELU"] = max(aligned.values())
    if name in FP64_NAMES:  # one per width: float64 costs 2-4x
        ours64 = SiglipModel.from_pretrained(tmp_path / "out", dtype=torch.float64)
        fp64 = _diffs(
            _siglip_outputs(ours64, pixels.double(), ids),
            _open_clip_outputs(oracle.double(), pixels.double(), ids),
        )
        figures["fp64 tanh GELU"] = max(fp64.values())
        assert figures["fp64 tanh GELU"] < FP64_TOLERANCE
    PARITY[name] = figures
    assert figures["fp32 as is"] < (GELU_TOLERANCE if exact_gelu else FP32_TOLERANCE), figures
    assert figures.get("fp32 tanh GELU", 0.0) < FP32_TOLERANCE, figures


def test_open_clip_folder_training_checkpoint_and_names(tmp_path):
    """A folder with open_clip_config.json (heads from it), an open_clip training checkpoint, --arch."""
    oracle = _open_clip_model("ViT-B-16-SigLIP2-256")
    folder = tmp_path / "hub"
    folder.mkdir()
    torch.save(oracle.state_dict(), folder / "open_clip_pytorch_model.bin")
    model_cfg = copy.deepcopy(open_clip.get_model_config("ViT-B-16-SigLIP2-256"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    (folder / "tokenizer_config.json").write_text("{}")
    architecture = convert(folder, tmp_path / "out")
    assert (tmp_path / "out" / "tokenizer_config.json").is_file()
    assert json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())["size"] == {
        "height": 256, "width": 256}  # fmt: skip
    gelu = [
        note for note in architecture.notes if "GELU" in note
    ]  # SigLIP 2 text: tanh; this timm tower: exact
    assert len(gelu) == 1 and gelu[0].startswith("the source's image tower(s) compute the exact GELU"), gelu

    training = tmp_path / "epoch_3.pt"
    torch.save(
        {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in oracle.state_dict().items()}}, training
    )
    convert(training, tmp_path / "out2")
    first = SiglipModel.from_pretrained(tmp_path / "out").state_dict()
    second = SiglipModel.from_pretrained(tmp_path / "out2").state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)

    with pytest.raises(ConversionError, match=r"resblocks\.2\.ln_1\.weight' is missing"):  # --arch: 12 layers
        detect(folder, arch="ViT-B-16-SigLIP2-256")
    with pytest.raises(ConversionError, match="is a timm tower, but"):
        detect(folder, arch="vit_base_patch16_siglip_256")


def test_open_clip_full_size_name_detected():
    """A released configuration at full size is recognised by name from its shapes (meta tensors: no memory)."""
    with torch.device("meta"):
        model = open_clip.create_model("ViT-SO400M-14-SigLIP", pretrained=None, device="meta")
    architecture = oc_table.find_arch(oc_table.config_from_open_clip(Tensors(model.state_dict(), "x")))
    assert architecture is not None and architecture.name == "ViT-SO400M-14-SigLIP"
    assert architecture.context == 16


def test_round_trip_bit_identical():
    """siglip -> open_clip -> siglip reproduces every tensor bit for bit (also float16 and the identity head)."""
    for name in ("ViT-B-16-SigLIP", "ViT-SO400M-16-SigLIP-i18n-256", "ViT-gopt-16-SigLIP2-256"):
        config = oc_table.arch(name).config(vision_depth=DEPTH, text_depth=DEPTH)
        config.text_config.vocab_size = VOCAB
        torch.manual_seed(0)
        for dtype in (torch.float32, torch.float16):
            with torch.device("meta"):
                shapes = {k: v.shape for k, v in SiglipModel(config).state_dict().items()}
            ours = {k: torch.randn(shape).to(dtype) for k, shape in shapes.items()}
            theirs = oc_table.siglip_to_open_clip(Tensors(ours, "ours"), config).tensors
            back = oc_table.open_clip_to_siglip(Tensors(theirs, "theirs"), config).tensors
            assert back.keys() == ours.keys()
            assert all(torch.equal(back[k], ours[k]) and back[k].dtype == dtype for k in ours), name


def _random_siglip(config, folder: Path) -> SiglipModel:
    """A SiglipModel of random values (std 0.02, LayerNorm scales near 1), saved in `folder` and loaded back,
    without running its initialiser (over 30 s for a full-size B/16 on a shared CPU)."""
    with torch.device("meta"):
        model = SiglipModel(config)
    torch.manual_seed(0)
    state = {k: torch.randn(v.shape) * 0.02 + (1.0 if "norm" in k and k.endswith("weight") else 0.0)
             for k, v in model.state_dict().items()}  # fmt: skip
    model.load_state_dict(state, strict=True, assign=True)
    model.save_pretrained(folder)
    return SiglipModel.from_pretrained(folder).eval()


def test_to_open_clip_loads_in_open_clip(tmp_path):
    """Ours -> open_clip folder: open_clip loads it (strict) and computes our embeddings; back is bit-identical."""
    arch = oc_table.arch("ViT-B-32-SigLIP2-256")  # the smallest released timm tower, at full depth
    config = arch.config(text_depth=DEPTH)
    config.text_config.vocab_size = VOCAB
    model = _random_siglip(config, tmp_path / "ours")
    (tmp_path / "ours" / "spiece.model").write_bytes(b"tokenizer")
    architecture = to_open_clip(tmp_path / "ours", tmp_path / "oc")
    assert architecture.family == "open_clip"
    assert (tmp_path / "oc" / "spiece.model").read_bytes() == b"tokenizer"
    oracle, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'oc'}")
    oracle.eval()
    torch.manual_seed(1)
    pixels, ids = torch.randn(2, 3, 256, 256), torch.randint(0, VOCAB, (2, 64))
    diffs = _diffs(_siglip_outputs(model, pixels, ids), _open_clip_outputs(oracle, pixels, ids))
    PARITY["to open_clip ViT-B-32-SigLIP2-256 (text 2 layers)"] = {"fp32": max(diffs.values())}
    assert max(diffs.values()) < FP32_TOLERANCE, diffs

    convert(tmp_path / "oc", tmp_path / "back")
    back = SiglipModel.from_pretrained(tmp_path / "back").state_dict()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())
    assert json.loads((tmp_path / "back" / "config.json").read_text())["text_config"] == json.loads(
        (tmp_path / "ours" / "config.json").read_text())["text_config"]  # fmt: skip


@pytest.mark.slow  # full size: the smallest SigLIP and SigLIP 2 configurations
@pytest.mark.parametrize("name", ["ViT-B-16-SigLIP", "ViT-B-32-SigLIP2-256"])
def test_to_open_clip_loads_by_name(name, tmp_path):
    """The user's path, at the released size: `siglip convert OURS --to-open-clip OUT`, then open_clip's
    `create_model_and_transforms(name, pretrained=OUT/open_clip_model.safetensors)` (a strict load into the
    model open_clip builds from its own configuration) computes our embeddings and logits."""
    config = oc_table.arch(name).config()
    model = _random_siglip(config, tmp_path / "ours")
    assert main(["convert", str(tmp_path / "ours"), "--to-open-clip", str(tmp_path / "oc")]) == 0
    oracle, _, _ = open_clip.create_model_and_transforms(
        name, pretrained=str(tmp_path / "oc" / "open_clip_model.safetensors")
    )
    oracle.eval()
    size, context = oracle.visual.image_size[0], oracle.text.context_length
    torch.manual_seed(1)
    pixels, ids = torch.randn(2, 3, size, size), torch.randint(0, config.text_config.vocab_size, (2, context))
    ours = _siglip_outputs(model, pixels, ids)
    figures = {"fp32 as is": max(_diffs(ours, _open_clip_outputs(oracle, pixels, ids)).values())}
    exact_gelu = _tanh_gelu(oracle)
    if exact_gelu:
        figures["fp32 tanh GELU"] = max(_diffs(ours, _open_clip_outputs(oracle, pixels, ids)).values())
    PARITY[f"to open_clip by name {name} (full size)"] = figures
    assert figures["fp32 as is"] < (GELU_TOLERANCE if exact_gelu else FP32_TOLERANCE), figures
    assert figures.get("fp32 tanh GELU", 0.0) < FP32_TOLERANCE, figures


def test_to_open_clip_refuses_a_tower_timm_lacks(tmp_path):
    config = oc_table.arch("ViT-B-16-SigLIP").config(vision_depth=DEPTH, text_depth=DEPTH)
    config.text_config.vocab_size = VOCAB
    SiglipModel(config).save_pretrained(tmp_path / "ours")
    with pytest.raises(ConversionError, match="no released timm SigLIP tower"):
        to_open_clip(tmp_path / "ours", tmp_path / "oc")
    assert not (tmp_path / "oc").exists()


# --- timm towers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_timm_tower_parity(name, tmp_path):
    torch.manual_seed(0)
    oracle = timm.create_model(name, pretrained=False, depth=TIMM_DEPTH).eval()
    with torch.no_grad():
        for tensor in oracle.state_dict().values():
            tensor.add_(torch.randn_like(tensor) * 0.02)
    from safetensors.torch import save_file

    folder = tmp_path / "timm"  # timm's hub layout: the name in config.json says 27 layers, the file has 1
    folder.mkdir()
    save_file(oracle.state_dict(), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": f"{name}.webli", "num_classes": 0}))
    with pytest.raises(
        ConversionError, match=rf"model.safetensors': tensor 'blocks.{TIMM_DEPTH}.norm1.weight' is missing"
    ):
        detect(folder)
    save_file(oracle.state_dict(), str(tmp_path / "tower.safetensors"))
    architecture = convert(tmp_path / "tower.safetensors", tmp_path / "out")
    assert architecture.family == "timm"
    ours = SiglipVisionModel.from_pretrained(tmp_path / "out")
    size = oracle.patch_embed.img_size[0]
    pixels = torch.randn(1, 3, size, size)

    def pooled(model, x):
        with torch.no_grad():
            if not isinstance(model, SiglipVisionModel):
                return model(x)
            out = model(pixel_values=x)
            return out.pooler_output if out.pooler_output is not None else out.last_hidden_state.mean(1)

    figures = {"fp32 as is": _max_diff(pooled(ours, pixels), pooled(oracle, pixels))}
    exact_gelu = _tanh_gelu(oracle)
    if exact_gelu:
        figures["fp32 tanh GELU"] = _max_diff(pooled(ours, pixels), pooled(oracle, pixels))
    PARITY[name] = figures
    assert figures["fp32 as is"] < (GELU_TOLERANCE if exact_gelu else FP32_TOLERANCE), figures
    assert figures.get("fp32 tanh GELU", 0.0) < FP32_TOLERANCE, figures


def test_timm_classifier_is_dropped_by_name(tmp_path):
    oracle = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, depth=DEPTH, num_classes=10)
    torch.save(oracle.state_dict(), tmp_path / "tower.bin")
    architecture = convert(tmp_path / "tower.bin", tmp_path / "out")
    assert any(note.startswith("dropped 'head.weight'") for note in architecture.notes)


def test_legacy_torch_files_convert_as_zip_files_do_and_pickled_code_is_refused(tmp_path, monkeypatch):
    """torch's legacy format (a plain pickle, `_use_new_zipfile_serialization=False`) is read without running
    code, as the zip format is."""
    state = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, depth=DEPTH).state_dict()
    for zipped in (True, False):
        torch.save(state, tmp_path / f"tower-{zipped}.bin", _use_new_zipfile_serialization=zipped)
        convert(tmp_path / f"tower-{zipped}.bin", tmp_path / f"out-{zipped}")
    legacy = SiglipVisionModel.from_pretrained(tmp_path / "out-False").state_dict()
    zipped = SiglipVisionModel.from_pretrained(tmp_path / "out-True").state_dict()
    assert all(torch.equal(legacy[k], zipped[k]) for k in zipped)

    monkeypatch.chdir(tmp_path)
    torch.save({**state, "head": _Exploit()}, tmp_path / "code.bin", _use_new_zipfile_serialization=False)
    with pytest.raises(
        ConversionError,
        match=r"code.bin' as plain tensors: it holds pickled code or objects \(.*GLOBAL posix.system",
    ):
        convert(tmp_path / "code.bin", tmp_path / "out")
    assert not (tmp_path / "exploited").exists() and not (tmp_path / "out").exists()


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch exploited",))


# --- big_vision ---------------------------------------------------------------------------------------------

# Released shapes: (variant, patch, image, vocab, text variant, text length, text head).
_BV = {"B": (768, 3072, 12), "L": (1024, 4096, 16), "So400m": (1152, 4304, 16), "g-opt": (1536, 6144, 16)}
BIG_VISION = (
    [("B", 16, r, 32000, "B", 64, True) for r in (224, 256, 384, 512)]
    + [("L", 16, r, 32000, "L", 64, True) for r in (256, 384)]
    + [("So400m", 14, 224, 32000, "So400m", 16, True), ("So400m", 14, 384, 32000, "So400m", 64, True)]
    + [("B", 16, 256, 250000, "B", 64, True), ("So400m", 16, 256, 250000, "So400m", 64, False)]
    + [("B", 32, 256, 256000, "B", 64, True)]
    + [("B", 16, r, 256000, "B", 64, True) for r in (224, 256, 384, 512)]
    + [("L", 16, r, 256000, "L", 64, True) for r in (256, 384, 512)]
    + [("So400m", 14, r, 256000, "So400m", 64, True) for r in (224, 384)]
    + [("So400m", 16, r, 256000, "So400m", 64, True) for r in (256, 384, 512)]
    + [("g-opt", 16, r, 256000, "So400m", 64, True) for r in (256, 384)]
)

# One per variant and family, with the scanned and the head-less layouts: these also run both forwards.
BIG_VISION_FORWARD = (
    BIG_VISION[0],
    BIG_VISION[4],
    BIG_VISION[6],
    BIG_VISION[9],
    BIG_VISION[10],
    BIG_VISION[-2],
)


def _bv_block(rng, width, mlp, heads, prefix, tree, layers=None):
    """One big_vision Encoder1DBlock's parameters (Flax names and shapes); `layers` stacks them (scan)."""
    lead = () if layers is None else (layers,)

    def put(name, *shape):
        tree[f"{prefix}/{name}"] = rng.standard_normal(lead + shape).astype(np.float32) * 0.05

    head_dim = width // heads
    for norm in ("LayerNorm_0", "LayerNorm_1"):
        put(f"{norm}/scale", width)
        put(f"{norm}/bias", width)
    _bv_attention(put, "MultiHeadDotProductAttention_0", width, heads, head_dim)
    _bv_mlp(put, "MlpBlock_0", width, mlp)


def _bv_attention(put, prefix, width, heads, head_dim):
    for part in ("query", "key", "value"):
        put(f"{prefix}/{part}/kernel", width, heads, head_dim)
        put(f"{prefix}/{part}/bias", heads, head_dim)
    put(f"{prefix}/out/kernel", heads, head_dim, width)
    put(f"{prefix}/out/bias", width)


def _bv_mlp(put, prefix, width, mlp):
    put(f"{prefix}/Dense_0/kernel", width, mlp)
    put(f"{prefix}/Dense_0/bias", mlp)
    put(f"{prefix}/Dense_1/kernel", mlp, width)
    put(f"{prefix}/Dense_1/bias", width)


def _big_vision_tree(variant, patch, image, vocab, text_variant, length, head, *, scan=False, naflex=False):
    rng = np.random.default_rng(0)
    width, mlp, heads = _BV[variant]
    t_width, t_mlp, t_heads = _BV[text_variant]
    tree: dict[str, np.ndarray] = {}

    def put(name, *shape):
        tree[name] = rng.standard_normal(shape).astype(np.float32) * 0.05

    put("t", 1)
    put("b", 1)
    if naflex:
        put("img/embedding/kernel", patch * patch * 3, width)
        put("img/pos_embedding", 16, 16, width)
    else:
        put("img/embedding/kernel", patch, patch, 3, width)
        put("img/pos_embedding", 1, (image // patch) ** 2, width)
    put("img/embedding/bias", width)
    if scan:
        _bv_block(rng, width, mlp, heads, "img/Transformer/encoderblock", tree, layers=DEPTH)
    else:
        for i in range(DEPTH):
            _bv_block(rng, width, mlp, heads, f"img/Transformer/encoderblock_{i}", tree)
    put("img/Transformer/encoder_norm/scale", width)
    put("img/Transformer/encoder_norm/bias", width)
    put("img/MAPHead_0/probe", 1, 1, width)
    _bv_attention(lambda n, *s: put(f"img/MAPHead_0/{n}", *s), "MultiHeadDotProductAttention_0", width, heads,
                  width // heads)  # fmt: skip
    put("img/MAPHead_0/LayerNorm_0/scale", width)
    put("img/MAPHead_0/LayerNorm_0/bias", width)
    _bv_mlp(lambda n, *s: put(f"img/MAPHead_0/{n}", *s), "MlpBlock_0", width, mlp)
    put("txt/Embed_0/embedding", vocab, t_width)
    put("txt/pos_embedding", 1, length, t_width)
    for i in range(DEPTH):
        _bv_block(rng, t_width, t_mlp, t_heads, f"txt/Encoder_0/encoderblock_{i}", tree)
    put("txt/Encoder_0/encoder_norm/scale", t_width)
    put("txt/Encoder_0/encoder_norm/bias", t_width)
    if head:
        put("txt/head/kernel", t_width, width)
        put("txt/head/bias", width)
    return tree


def _transformers_from_tree(tree, patch, image, vocab, length, build=True, naflex=False):
    """A transformers SiglipModel (Siglip2Model for NaFlex) holding the tree's values, placed by this test's
    own mapping (einsum)."""
    per_layer = {k: v for k, v in tree.items() if "/encoderblock/" in k}
    for key, stacked in per_layer.items():  # unstack a scanned encoder
        del tree[key]
        for i, value in enumerate(stacked):
            tree[key.replace("/encoderblock/", f"/encoderblock_{i}/")] = value
    t = {k: torch.from_numpy(v) for k, v in tree.items()}
    width, t_width = t["img/embedding/bias"].shape[0], t["txt/Embed_0/embedding"].shape[1]
    heads = t["img/Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/bias"].shape[0]
    t_heads = t["txt/Encoder_0/encoderblock_0/MultiHeadDotProductAttention_0/query/bias"].shape[0]
    proj = t["txt/head/bias"].shape[0] if "txt/head/bias" in t else t_width
    vision = dict(hidden_size=width, intermediate_size=t["img/MAPHead_0/MlpBlock_0/Dense_0/bias"].shape[0],
                  num_hidden_layers=DEPTH, num_attention_heads=heads, patch_size=patch)  # fmt: skip
    text = dict(hidden_size=t_width, num_attention_heads=t_heads, num_hidden_layers=DEPTH, vocab_size=vocab,
                intermediate_size=t["txt/Encoder_0/encoderblock_0/MlpBlock_0/Dense_0/bias"].shape[0],
                max_position_embeddings=length, projection_size=proj)  # fmt: skip
    if naflex:  # the position grid is (G, G, D)
        grid = t["img/pos_embedding"].shape[0] * t["img/pos_embedding"].shape[1]
        config = transformers.Siglip2Config(vision_config=dict(vision, num_patches=grid), text_config=text)
    else:
        config = transformers.SiglipConfig(vision_config=dict(vision, image_size=image), text_config=text)
    sd: dict[str, torch.Tensor] = {"logit_scale": t["t"], "logit_bias": t["b"]}

    def linear(dst, src):
        sd[f"{dst}.weight"] = torch.einsum("io->oi", t[f"{src}/kernel"])
        sd[f"{dst}.bias"] = t[f"{src}/bias"]

    def norm(dst, src):
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = t[f"{src}/scale"], t[f"{src}/bias"]

    def attention(src):
        q, k, v = (
            torch.einsum("ihd->hdi", t[f"{src}/{p}/kernel"]).flatten(0, 1) for p in ("query", "key", "value")
        )
        qb, kb, vb = (t[f"{src}/{p}/bias"].flatten() for p in ("query", "key", "value"))
        return (
            (q, k, v),
            (qb, kb, vb),
            torch.einsum("hdo->ohd", t[f"{src}/out/kernel"]).flatten(1),
            t[f"{src}/out/bias"],
        )

    for tower, enc in (("vision_model", "img/Transformer"), ("text_model", "txt/Encoder_0")):
        for i in range(DEPTH):
            src, dst = f"{enc}/encoderblock_{i}", f"{tower}.encoder.layers.{i}"
            norm(f"{dst}.layer_norm1", f"{src}/LayerNorm_0")
            norm(f"{dst}.layer_norm2", f"{src}/LayerNorm_1")
            (q, k, v), (qb, kb, vb), out, out_b = attention(f"{src}/MultiHeadDotProductAttention_0")
            for name, w, b in (("q", q, qb), ("k", k, kb), ("v", v, vb), ("out", out, out_b)):
                sd[f"{dst}.self_attn.{name}_proj.weight"], sd[f"{dst}.self_attn.{name}_proj.bias"] = w, b
            linear(f"{dst}.mlp.fc1", f"{src}/MlpBlock_0/Dense_0")
            linear(f"{dst}.mlp.fc2", f"{src}/MlpBlock_0/Dense_1")
    norm("vision_model.post_layernorm", "img/Transformer/encoder_norm")
    norm("text_model.final_layer_norm", "txt/Encoder_0/encoder_norm")
    # NaFlex: a Dense over patches flattened (y, x, channel), the layout of transformers' processor; else a conv
    pattern = "io->oi" if naflex else "yxco->ocyx"
    sd["vision_model.embeddings.patch_embedding.weight"] = torch.einsum(pattern, t["img/embedding/kernel"])
    sd["vision_model.embeddings.patch_embedding.bias"] = t["img/embedding/bias"]
    # (1, N, D), or NaFlex's (G, G, D) grid: either way rows in (row, column) order
    sd["vision_model.embeddings.position_embedding.weight"] = t["img/pos_embedding"].flatten(0, 1)
    sd["vision_model.head.probe"] = t["img/MAPHead_0/probe"]
    (q, k, v), (qb, kb, vb), out, out_b = attention("img/MAPHead_0/MultiHeadDotProductAttention_0")
    sd["vision_model.head.attention.in_proj_weight"] = torch.cat([q, k, v])
    sd["vision_model.head.attention.in_proj_bias"] = torch.cat([qb, kb, vb])
    sd["vision_model.head.attention.out_proj.weight"], sd["vision_model.head.attention.out_proj.bias"] = (
        out,
        out_b,
    )
    norm("vision_model.head.layernorm", "img/MAPHead_0/LayerNorm_0")
    linear("vision_model.head.mlp.fc1", "img/MAPHead_0/MlpBlock_0/Dense_0")
    linear("vision_model.head.mlp.fc2", "img/MAPHead_0/MlpBlock_0/Dense_1")
    sd["text_model.embeddings.token_embedding.weight"] = t["txt/Embed_0/embedding"]
    sd["text_model.embeddings.position_embedding.weight"] = t["txt/pos_embedding"].flatten(0, 1)
    if "txt/head/kernel" in t:
        linear("text_model.head", "txt/head")
    else:
        sd["text_model.head.weight"], sd["text_model.head.bias"] = torch.eye(t_width), torch.zeros(t_width)
    sd = {k: v.contiguous() for k, v in sd.items()}
    if not build:
        return None, sd
    model = (transformers.Siglip2Model if naflex else transformers.SiglipModel)(config).eval()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    return model, sd


@pytest.mark.parametrize("shape", BIG_VISION, ids=lambda s: f"{s[0]}-{s[1]}-{s[2]}-v{s[3]}")
def test_big_vision_npz(shape, tmp_path):
    variant, patch, image, vocab, *_ = shape
    vocab = min(vocab, 1000) if vocab != 32000 else vocab  # keeps the family (v1) apart; 250k/256k are slow
    shape = (variant, patch, image, vocab, *shape[4:])
    tree = _big_vision_tree(*shape, scan=variant == "So400m" and patch == 16)
    np.savez(tmp_path / "ckpt.npz", **{f"params/{k}": v for k, v in tree.items()})
    architecture = convert(tmp_path / "ckpt.npz", tmp_path / "out")
    assert architecture.family == "big_vision"
    forward = shape in BIG_VISION_FORWARD  # building and running transformers' model is the slow part
    reference, reference_sd = _transformers_from_tree(
        dict(tree), patch, image, vocab, shape[5], build=forward
    )
    ours = SiglipModel.from_pretrained(tmp_path / "out")
    converted = ours.state_dict()
    assert converted.keys() == reference_sd.keys()
    assert all(torch.equal(converted[k], v) for k, v in reference_sd.items())
    if not forward:
        return
    theirs = transformers.SiglipModel.from_pretrained(tmp_path / "out").eval()  # transformers loads ours
    assert all(torch.equal(theirs.state_dict()[k], v) for k, v in reference_sd.items())
    torch.manual_seed(1)
    pixels, ids = torch.randn(2, 3, image, image), torch.randint(0, vocab, (2, shape[5]))
    with torch.no_grad():
        want = reference(input_ids=ids, pixel_values=pixels)
    diff = _max_diff(_siglip_outputs(ours, pixels, ids)[2], want.logits_per_image)
    assert diff < 1e-4 * max(1.0, want.logits_per_image.abs().max().item())


# Released NaFlex shapes, google/siglip2-{base,so400m}-patch16-naflex: (variant = text variant, patch, text length);
# a 16 x 16 position grid, a text head, the Gemma vocabulary (1000 pieces here: the embedding is a plain copy).
BIG_VISION_NAFLEX = [("B", 16, 64), ("So400m", 16, 64)]
# A batch of mixed aspect ratios (height, width): tall, wide, square, a strip.
NAFLEX_SIZES = [(200, 40), (120, 300), (96, 96), (8, 500)]


@pytest.mark.parametrize("shape", BIG_VISION_NAFLEX, ids=lambda s: f"naflex-{s[0]}-{s[1]}")
def test_big_vision_naflex_npz(shape, tmp_path):
    """A NaFlex npz converts to a Siglip2Model equal to a transformers Siglip2Model placed by the test's mapping;
    transformers loads the converted folder (model and image processor) and computes the same on a batch of
    mixed aspect ratios."""
    from PIL import Image

    from siglip import Siglip2ImageProcessor, Siglip2Model

    variant, patch, length = shape
    vocab = 1000
    tree = _big_vision_tree(variant, patch, None, vocab, variant, length, True, scan=variant == "So400m",
                            naflex=True)  # fmt: skip
    np.savez(tmp_path / "ckpt.npz", **{f"params/{k}": v for k, v in tree.items()})
    architecture = convert(tmp_path / "ckpt.npz", tmp_path / "out")
    assert architecture.family == "big_vision"
    assert architecture.name.startswith("SigLIP 2 NaFlex") and architecture.name.endswith(
        f"/{patch} (16x16 position grid)"
    )
    reference, reference_sd = _transformers_from_tree(dict(tree), patch, None, vocab, length, naflex=True)
    ours = Siglip2Model.from_pretrained(tmp_path / "out")
    converted = ours.state_dict()
    assert converted.keys() == reference_sd.keys()
    assert all(torch.equal(converted[k], v) for k, v in reference_sd.items())

    theirs = transformers.Siglip2Model.from_pretrained(tmp_path / "out").eval()  # transformers loads ours
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in NAFLEX_SIZES]
    inputs = Siglip2ImageProcessor.from_pretrained(tmp_path / "out")(images, return_tensors="pt")
    their_inputs = transformers.Siglip2ImageProcessor.from_pretrained(tmp_path / "out")(  # each one's default
        images, return_tensors="pt"
    )
    assert all(torch.equal(inputs[k], their_inputs[k]) for k in inputs)
    assert len({tuple(s) for s in inputs["spatial_shapes"].tolist()}) == len(NAFLEX_SIZES)  # aspects differ
    torch.manual_seed(1)
    ids = torch.randint(0, vocab, (2, length))
    with torch.no_grad():
        want = reference(input_ids=ids, **their_inputs)
        got = ours(input_ids=ids, **inputs)
        loaded = theirs(input_ids=ids, **their_inputs)
    outputs = ("image_embeds", "text_embeds", "logits_per_image")
    diffs = {k: _max_diff(getattr(got, k), getattr(want, k)) for k in outputs}
    loaded_diffs = {k: _max_diff(getattr(loaded, k), getattr(want, k)) for k in outputs}
    PARITY[f"big_vision NaFlex {variant}/{patch}"] = {
        "fp32 ours": max(diffs.values()),
        "fp32 transformers loading ours": max(loaded_diffs.values()),
    }
    assert max(diffs.values()) < FP32_TOLERANCE, diffs
    assert max(loaded_diffs.values()) == 0.0, loaded_diffs  # the same transformers model, the same values

    # The layout itself, from big_vision's side: its Dense embeds patches flattened (y, x, channel) (`BN(hw3)`
    # in naflex_vit.py), i.e. it is the conv (P, P, 3, D) over the image; a patch-aligned image is not resized.
    pixels = rng.integers(0, 256, (2 * patch, 3 * patch, 3), dtype=np.uint8)
    one = Siglip2ImageProcessor.from_pretrained(tmp_path / "out")(
        [Image.fromarray(pixels)], do_resize=False, return_tensors="pt"
    )
    assert one["spatial_shapes"].tolist() == [[2, 3]]
    kernel = torch.from_numpy(tree["img/embedding/kernel"]).reshape(patch, patch, 3, -1)
    image = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255 * 2 - 1
    conv = torch.nn.functional.conv2d(image, torch.einsum("yxco->ocyx", kernel), stride=patch)
    with torch.no_grad():
        dense = ours.vision_model.embeddings.patch_embedding(one["pixel_values"][0, :6])
    bias = torch.from_numpy(tree["img/embedding/bias"])
    assert _max_diff(dense, conv.flatten(2)[0].T + bias) < FP32_TOLERANCE


def test_big_vision_naflex_bad_shapes(tmp_path):
    """A NaFlex embedding that is no RGB patch grid, and a NaFlex-only layer our model lacks: clear errors."""
    tree = _big_vision_tree("B", 16, None, 1000, "B", 64, True, naflex=True)
    np.savez(tmp_path / "grid.npz", **{**tree, "img/pos_embedding": tree["img/pos_embedding"][:, :8]})
    with pytest.raises(ConversionError, match=r"grid.npz': tensors 'img/embedding/kernel' \(768, 768\) and "
                       r"'img/pos_embedding' \(16, 8, 768\) are not a NaFlex embedding"):  # fmt: skip
        convert(tmp_path / "grid.npz", tmp_path / "out")
    # big_vision's optional patch LayerNorm (off in the released checkpoints) has no place in our model
    ln = {f"img/patchln_pre/{leaf}": np.ones(768, np.float32) for leaf in ("scale", "bias")}
    np.savez(tmp_path / "patchln.npz", **tree, **ln)
    with pytest.raises(ConversionError, match=r"patchln.npz': 2 tensor\(s\) have no place .*'img/patchln"):
        convert(tmp_path / "patchln.npz", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_naflex_to_open_clip_is_refused(tmp_path):
    """open_clip has no NaFlex model: writing one for it is refused, naming the folder."""
    from _material import save_tiny_naflex

    save_tiny_naflex(tmp_path / "naflex")
    with pytest.raises(ConversionError, match=r"naflex' is a SigLIP 2 NaFlex model.*open_clip has no NaFlex"):
        to_open_clip(tmp_path / "naflex", tmp_path / "oc")
    assert not (tmp_path / "oc").exists()


# --- bad sources ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def open_clip_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("src") / "open_clip_pytorch_model.bin"
    torch.save(_open_clip_model("ViT-B-16-SigLIP").state_dict(), path)
    return path


@pytest.mark.parametrize("suffix", [".bin", ".npz", ".safetensors"])
def test_truncated_file(suffix, open_clip_file, tmp_path):
    data = open_clip_file.read_bytes()
    if suffix == ".npz":
        np.savez(tmp_path / "full.npz", **_big_vision_tree("B", 16, 224, 1000, "B", 64, True))
        data = (tmp_path / "full.npz").read_bytes()
    elif suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(torch.load(open_clip_file), str(tmp_path / "full.safetensors"))
        data = (tmp_path / "full.safetensors").read_bytes()
    bad = tmp_path / f"cut{suffix}"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match=rf"'{bad}' cannot be read \(truncated"):
        convert(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_architecture(tmp_path):
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "x.bin")
    with pytest.raises(ConversionError, match=r"x.bin': unknown architecture \(tensors 'encoder.weight'"):
        convert(tmp_path / "x.bin", tmp_path / "out")


def test_clip_checkpoint_is_not_siglip(tmp_path):
    cfg = open_clip.get_model_config("ViT-B-32")
    model = open_clip.create_model(
        "ViT-B-32", pretrained=None, vision_cfg={**cfg["vision_cfg"], "layers": 1},
        text_cfg={**cfg["text_cfg"], "layers": 1},
    )  # fmt: skip
    torch.save(model.state_dict(), tmp_path / "clip.bin")
    with pytest.raises(
        ConversionError, match=r"clip.bin': tensor '[^']+' belongs to an open_clip CLIP model"
    ):
        convert(tmp_path / "clip.bin", tmp_path / "out")


def test_mismatched_and_unused_tensors(open_clip_file, tmp_path):
    state = torch.load(open_clip_file)
    state["visual.trunk.blocks.1.mlp.fc1.weight"] = torch.zeros(100, 768)
    torch.save(state, tmp_path / "shape.bin")
    with pytest.raises(
        ConversionError, match=r"shape.bin': tensor 'visual.trunk.blocks.1.mlp.fc1.weight' gives"
    ):
        convert(tmp_path / "shape.bin", tmp_path / "out")
    state = torch.load(open_clip_file)
    state["text.extra_scale"] = torch.ones(3)
    torch.save(state, tmp_path / "extra.bin")
    with pytest.raises(
        ConversionError, match=r"extra.bin': 1 tensor\(s\) have no place .*'text.extra_scale'"
    ):
        convert(tmp_path / "extra.bin", tmp_path / "out")
    state = torch.load(open_clip_file)
    del state["text.ln_final.bias"]
    torch.save(state, tmp_path / "missing.bin")
    with pytest.raises(ConversionError, match=r"missing.bin': tensor 'text.ln_final.bias' is missing"):
        convert(tmp_path / "missing.bin", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli(open_clip_file, tmp_path, capsys):
    assert main(["convert", str(open_clip_file), "--to", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "architecture: open_clip custom model" in printed and "tokenizer" in printed
    assert main(["convert", str(open_clip_file), "--to", str(tmp_path / "out")]) == 2  # not empty: refused
    assert "already exists" in capsys.readouterr().err
    assert main(["convert", str(open_clip_file), "--to", str(tmp_path / "o2"), "--arch", "big_vision"]) == 2
    assert "not in big_vision's layout" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".safetensors", ".npz"])
def test_a_file_of_random_bytes_is_no_checkpoint_format(suffix, tmp_path, capsys):
    """Not "pickled code ()" (torch's unpickler meeting noise): the file, and the formats convert reads."""
    noise = tmp_path / f"noise{suffix}"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    assert main(["convert", str(noise), "--to", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"siglip convert: error: '{noise}' is not in a checkpoint format siglip converts")
    assert err.rstrip().endswith(
        "torch.save files (.bin, .pt, .pth), .safetensors files and big_vision .npz files"
    )
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def _no_space_in_weights(state_dict, directory, **kwargs):
    """safetensors on a full disk: part of the file written, then its own error type."""
    from safetensors import SafetensorError

    (Path(directory) / "model.safetensors").write_bytes(b"\0" * 1000)
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def _no_space_in_config(config, path):
    """A full disk when the first file, config.json, is flushed: an OSError without a file name."""
    Path(path).write_text("{")
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("site", ["config", "weights"])
def test_a_full_disk_during_conversion_is_one_line_naming_the_output(site, open_clip_file, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["convert", str(open_clip_file), "--to", str(out)]
    with (
        mock.patch("siglip.core.config.PretrainedConfig.to_json_file", _no_space_in_config)
        if site == "config"
        else mock.patch("huggingface_hub.save_torch_state_dict", _no_space_in_weights)
    ):
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        f"siglip convert: error: cannot write '{out}': No space left on device; free some space and run the "
        "command again\n"
    )
    assert list(tmp_path.iterdir()) == []  # neither the output nor its staging
    assert main(argv) == 0  # space is back
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]


def test_what_a_killed_conversion_left_does_not_block_the_rerun(open_clip_file, tmp_path):
    """Staging folders of a process that is gone (and those earlier versions wrote, without their process) are
    removed; a living process's are not. The model's own saves stage nothing more: one staging folder (in
    `out`, which exists here)."""
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    host, out = socket.gethostname(), tmp_path / "out"
    for name in (
        f".saving-{host}-{int(gone.stdout)}-abc123/.saving-{host}-{int(gone.stdout)}-x",
        ".saving-k4m3jbwo",
    ):
        (out / name).mkdir(parents=True)
        (out / name / "model.safetensors").write_bytes(b"partial")
    living = tmp_path / f".saving-{host}-{os.getpid()}-living"
    living.mkdir()
    with mock.patch("tempfile.mkdtemp", side_effect=tempfile.mkdtemp) as mkdtemp:
        convert(open_clip_file, out)
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    assert living.is_dir()  # another conversion, still at work
    assert [(c.kwargs["prefix"], c.kwargs["dir"]) for c in mkdtemp.call_args_list] == [
        (f".saving-{host}-{os.getpid()}-", out)
    ]
