"""`scalselect assemble-llava`: a base LLM, a CLIP vision tower and a stage-1 projector file
become one LLaVA checkpoint, whose weights are exactly the parts' and which extracts."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scalselect.cli import main
from scalselect.demo import prepare_demo
from scalselect.stores import read_manifest


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A tiny Llama with its tokenizer (no <image>, no pad token), a tiny CLIP tower with its
    image processor, and LLaVA's stage-1 projector file joining them."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from scalselect.models.tiny import byte_tokenizer

    base = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    tokenizer = byte_tokenizer(specials=("<unk>", "<s>", "</s>"), unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    llm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    llm.save_pretrained(base / "llm")
    tokenizer.save_pretrained(base / "llm")
    tower = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14
        )
    )
    tower.save_pretrained(base / "clip")
    CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(base / "clip")
    projector = {
        "model.mm_projector.0.weight": torch.randn(64, 32),
        "model.mm_projector.0.bias": torch.randn(64),
        "model.mm_projector.2.weight": torch.randn(64, 64),
        "model.mm_projector.2.bias": torch.randn(64),
    }
    torch.save(projector, base / "mm_projector.bin")
    return {"base": base, "llm": llm, "tower": tower, "projector": projector, "vocab": len(tokenizer)}


def assemble(parts, out: Path, projector: Path | None = None) -> int:
    base = parts["base"]
    return main(
        [
            "assemble-llava",
            "--llm",
            str(base / "llm"),
            "--vision",
            str(base / "clip"),
            "--projector",
            str(projector or base / "mm_projector.bin"),
            "--out",
            str(out),
        ]
    )


def test_the_assembled_checkpoint_holds_the_parts_and_extracts(parts, tmp_path, capsys):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = tmp_path / "llava"
    assert assemble(parts, out) == 0
    model = AutoModelForImageTextToText.from_pretrained(out, local_files_only=True)
    processor = AutoProcessor.from_pretrained(out, local_files_only=True)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    got = model.state_dict()
    for key, value in parts["projector"].items():
        name = key.removeprefix("model.mm_projector.").replace("0.", "linear_1.").replace("2.", "linear_2.")
        assert torch.equal(got[f"model.multi_modal_projector.{name}"], value), key
    for key, value in parts["tower"].state_dict().items():
        assert torch.equal(got[f"model.vision_tower.{key}"], value), key
    vocab = parts["vocab"]
    for key, value in parts["llm"].model.state_dict().items():
        mine = got[f"model.language_model.{key}"]
        assert torch.equal(mine[:vocab] if key == "embed_tokens.weight" else mine, value), key
    # <image> and <pad> were added, their rows at the mean of the others
    embed = got["model.language_model.embed_tokens.weight"]
    assert embed.shape[0] == vocab + 2 and len(processor.tokenizer) == vocab + 2
    assert torch.allclose(embed[vocab:], parts["llm"].model.embed_tokens.weight.mean(dim=0).expand(2, -1))
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<image>")
    assert processor.tokenizer.pad_token == "<pad>" and processor.chat_template
    # a wide image is padded to a square in the mean colour (LLaVA's "pad"), not cropped: its top
    # rows are background, which normalises to ~0 (the mean rounded to 1/255, over the std)
    wide = Image.fromarray((np.random.default_rng(1).random((20, 60, 3)) * 255).astype("uint8"))
    pixels = processor.image_processor(images=[wide], return_tensors="pt")["pixel_values"][0]
    std = torch.tensor(processor.image_processor.image_std)
    assert float(pixels[:, 0].abs().max()) <= float((1 / 255) / std.min())
    assert float(pixels[:, pixels.shape[1] // 2].abs().max()) > 0.5  # the image itself, in the middle

    demo = prepare_demo(tmp_path / "demo", n=50)
    rc = main(
        [
            "extract",
            "--model",
            str(out),
            "--data",
            str(demo["pool"]),
            "--image-root",
            str(demo["images"]),
            "--out",
            str(tmp_path / "store"),
            "--workers",
            "0",
            "--quiet",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    manifest = read_manifest(tmp_path / "store")
    assert manifest["num_rows"] == 50 and manifest["dim"] == 64


def test_bad_parts_are_one_line_and_leave_nothing(parts, tmp_path, capsys):
    base = parts["base"]
    cases = {}
    torch.save({"model.mm_projector.0.weight": argparse.Namespace(a=1)}, tmp_path / "pickled.bin")
    cases["pickled.bin"] = "cannot read it as tensors"
    torch.save({"model.mm_projector.weight": torch.randn(64, 32)}, tmp_path / "linear.bin")
    cases["linear.bin"] = "expected LLaVA's mlp2x_gelu projector"
    torch.save({**parts["projector"], "model.mm_projector.0.weight": torch.randn(64, 16)}, tmp_path / "narrow.bin")
    cases["narrow.bin"] = "does not join this vision tower (32 wide) to this LLM (64 wide)"
    cases["missing.bin"] = "no such file"
    for name, message in cases.items():
        capsys.readouterr()
        assert assemble(parts, tmp_path / f"out-{name}", tmp_path / name) == 2, name
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err, err
        assert not (tmp_path / f"out-{name}").exists()
    (tmp_path / "taken").mkdir()
    assert assemble(parts, tmp_path / "taken") == 2
    assert "exists" in capsys.readouterr().err
    assert (
        main(
            [
                "assemble-llava",
                "--llm",
                str(base / "clip"),
                "--vision",
                str(base / "clip"),
                "--projector",
                str(base / "mm_projector.bin"),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "cannot load the parts" in capsys.readouterr().err
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging folder left
