"""Pool -> store extraction end to end on a tiny LLaVA: batching, workers, skips, resume, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig

from scalselect import InputError
from scalselect.cli import main
from scalselect.models import tiny
from scalselect.pipeline import ExtractOptions, extract_store
from scalselect.stores import StoreWriter, load_representations, read_manifest, read_skipped
from tolerances import assert_vectors_close, forward_rtol


DEMO_SAMPLES = 40  # the size of this module's demo pool (the `demo` fixture of conftest.py)


def opts(**kw):
    base = dict(workers=0, progress=False, store_dtype="float32", shard_rows=8, device="cpu")
    return ExtractOptions(**{**base, **kw})


def by_id(store: Path) -> dict:
    ids, x = load_representations(store)
    return {i: row for i, row in zip(ids, x)}


def assert_same_vectors(a: dict, b: dict, model=None):
    """The same samples, each vector within what two float32 forward passes of `model` may
    differ by (tests/tolerances.forward_rtol); without a model, equal."""
    assert set(a) == set(b)
    rtol = forward_rtol(AutoConfig.from_pretrained(model, local_files_only=True)) if model else 0.0
    for key in a:
        assert_vectors_close(a[key], b[key], rtol, str(key))


def test_store_rows_equal_each_sample_run_alone(demo, tmp_path):
    """Length-grouped, padded batches of 8 give every sample its batch-size-1 vector."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from scalselect.data import read_pool
    from scalselect.data.samples import SampleMaker, collate
    from scalselect.extract import layer_vectors

    summary = extract_store(demo["model"], demo["pool"], demo["images"], tmp_path / "s", opts(batch_size=8))
    assert summary["rows"] == 40 and summary["skipped"] == 2
    got = by_id(tmp_path / "s")

    processor = AutoProcessor.from_pretrained(demo["model"], local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(demo["model"], local_files_only=True).eval()
    maker = SampleMaker(processor, model.config.image_token_id, demo["images"], 2048)
    pool = read_pool(demo["pool"])
    lengths = set()
    for record, sample_id in zip(pool.records[:40], pool.ids[:40]):
        sample = maker(record, pool.layout, sample_id)
        lengths.add(sample.length)
        inputs, instruction = collate([sample], processor.tokenizer.pad_token_id)
        want, kept = layer_vectors(model, inputs, instruction, 0.9)
        assert int(kept[0]) >= 1
        assert_vectors_close(got[sample_id], want[0].numpy(), forward_rtol(model.config), str(sample_id))
    assert len(lengths) > 3  # the batches really mixed lengths


def test_workers_and_batch_size_do_not_change_the_store(demo, tmp_path):
    extract_store(demo["model"], demo["pool"], demo["images"], tmp_path / "a", opts(batch_size=1))
    extract_store(demo["model"], demo["pool"], demo["images"], tmp_path / "b", opts(batch_size=5, workers=2))
    assert_same_vectors(by_id(tmp_path / "a"), by_id(tmp_path / "b"), demo["model"])
    assert read_skipped(tmp_path / "a") == read_skipped(tmp_path / "b")


def test_manifest_records_model_settings_and_counts(demo, tmp_path):
    extract_store(demo["model"], demo["pool"], demo["images"], tmp_path / "s", opts(tau=0.7, max_length=300))
    manifest = read_manifest(tmp_path / "s")
    meta = manifest["meta"]
    assert manifest["dim"] == 64 and manifest["num_rows"] == 40 and manifest["num_skipped"] == 2
    assert manifest["skipped_by_reason"] == {"no image": 1, "unreadable image": 1}
    assert meta["family"] == "llava" and meta["model_class"] == "LlavaForConditionalGeneration"
    assert meta["model"] == str(Path(demo["model"]).resolve()) and len(meta["model_fingerprint"]) == 16
    assert meta["architecture"] == "LlavaForConditionalGeneration" and len(meta["pool_sha256"]) == 16
    assert meta["tau"] == 0.7 and meta["max_length"] == 300 and meta["compute_dtype"] == "float32"
    assert {"scalselect", "torch", "transformers"} <= set(meta["versions"])
    assert not (tmp_path / "s" / "progress.json").exists()


def write_images(root: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(5)
    Image.fromarray((rng.random((40, 60, 3)) * 255).astype("uint8")).save(root / "ok.png")
    Image.fromarray((rng.random((40, 60, 4)) * 255).astype("uint8"), "RGBA").save(root / "alpha.png")
    Image.fromarray((rng.random((30, 30)) * 255).astype("uint8"), "L").convert("P").save(root / "palette.png")
    (root / "garbage.png").write_bytes(b"not an image at all")
    data = (root / "ok.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root.parent / "outside.png").write_bytes(data)


def turn(user, reply="A cat."):
    return [{"from": "human", "value": user}, {"from": "gpt", "value": reply}]


def test_bad_samples_are_skipped_with_reasons_and_good_ones_kept(demo, tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    write_images(root)
    records = [
        {"id": "ok", "image": "ok.png", "conversations": turn("<image>\nWhat is it?")},
        {"id": "alpha", "image": "alpha.png", "conversations": turn("<image>\nWhat is it?")},
        {"id": "palette", "image": "palette.png", "conversations": turn("What is it?")},
        {
            "id": "two",
            "image": ["ok.png", "alpha.png"],
            "conversations": turn("<image> and <image>: same?") + turn("And now?", "No."),
        },
        {"id": "no-image", "conversations": turn("Hello?")},
        {"id": "missing", "image": "absent.png", "conversations": turn("<image>\nWhat?")},
        {"id": "garbage", "image": "garbage.png", "conversations": turn("<image>\nWhat?")},
        {"id": "truncated", "image": "truncated.png", "conversations": turn("<image>\nWhat?")},
        {"id": "escape", "image": "../outside.png", "conversations": turn("<image>\nWhat?")},
        {"id": "absolute", "image": str(root / "ok.png"), "conversations": turn("<image>\nWhat?")},
        {"id": "tags", "image": "ok.png", "conversations": turn("<image> <image> two tags?")},
        {"id": "no-reply", "image": "ok.png", "conversations": turn("<image>\nWhat?")[:1]},
        {"id": "empty-turn", "image": "ok.png", "conversations": turn("   ")},
    ]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = extract_store(demo["model"], pool, root, tmp_path / "s", opts())
    reasons = {s["sample_id"]: s["reason"] for s in read_skipped(tmp_path / "s")}
    assert reasons == {
        "no-image": "no image",
        "missing": "unreadable image",
        "garbage": "unreadable image",
        "truncated": "unreadable image",
        "escape": "image outside --image-root",
        "absolute": "image outside --image-root",
        "tags": "bad record",
        "no-reply": "bad record",
        "empty-turn": "bad record",
    }
    assert set(by_id(tmp_path / "s")) == {"ok", "alpha", "palette", "two"}
    assert summary["skipped"] == 9 and summary["rows"] == 4
    details = {s["sample_id"]: s["detail"] for s in read_skipped(tmp_path / "s")}
    assert "absent.png" in details["missing"] and "2 <image> tags for 1 images" in details["tags"]

    # allowed on request: the two outside paths are then read
    extract_store(demo["model"], pool, root, tmp_path / "s2", opts(allow_outside_root=True))
    assert {"escape", "absolute"} <= set(by_id(tmp_path / "s2"))


def test_max_length_truncates_text_but_skips_cut_vision_tokens(demo, tmp_path):
    # 56 px images -> 16 vision tokens each; "USER: " comes first
    records = [
        {"id": "one", "image": "coco/a.png", "conversations": turn("<image>\nWhat is shown here?", "A long answer " * 5)},
        {"id": "two", "image": ["coco/a.png", "coco/a.png"], "conversations": turn("<image><image>Same?")},
    ]
    from PIL import Image

    root = tmp_path / "img"
    (root / "coco").mkdir(parents=True)
    Image.fromarray((np.random.default_rng(0).random((56, 56, 3)) * 255).astype("uint8")).save(root / "coco/a.png")
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps(records))
    extract_store(demo["model"], pool, root, tmp_path / "s", opts(max_length=24))
    skipped = read_skipped(tmp_path / "s")
    assert [(s["sample_id"], s["reason"]) for s in skipped] == [("two", "vision tokens cut by --max-length")]
    full = tmp_path / "full"
    extract_store(demo["model"], pool, root, full, opts(max_length=4096))
    # truncation changes nothing before the cut, but the instruction rows after it are gone
    assert set(by_id(full)) == {"one", "two"}
    assert not np.allclose(by_id(tmp_path / "s")["one"], by_id(full)["one"])


class Crash(Exception):
    pass


def test_resume_after_a_crash_gives_the_uninterrupted_store(demo, tmp_path, monkeypatch):
    extract_store(demo["model"], demo["pool"], demo["images"], tmp_path / "whole", opts())
    real_add, calls = StoreWriter.add, []

    def add_then_crash(self, *args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise Crash  # dies while the third part is being committed
        return real_add(self, *args, **kw)

    monkeypatch.setattr(StoreWriter, "add", add_then_crash)
    with pytest.raises(Crash):
        extract_store(demo["model"], demo["pool"], demo["images"], tmp_path / "s", opts())
    monkeypatch.setattr(StoreWriter, "add", real_add)
    assert not (tmp_path / "s" / "manifest.json").exists()
    with pytest.raises(InputError, match="unfinished store"):
        extract_store(demo["model"], demo["pool"], demo["images"], tmp_path / "s", opts())
    with pytest.raises(InputError, match="other settings.*tau"):
        extract_store(demo["model"], demo["pool"], demo["images"], tmp_path / "s", opts(resume=True, tau=0.5))
    summary = extract_store(demo["model"], demo["pool"], demo["images"], tmp_path / "s", opts(resume=True, batch_size=3))
    assert 0 < summary["processed_this_run"] < 42  # the two committed parts were not redone
    ids, _ = load_representations(tmp_path / "s")
    assert len(ids) == len(set(ids)) == 40
    assert_same_vectors(by_id(tmp_path / "s"), by_id(tmp_path / "whole"), demo["model"])
    assert sorted(map(str, read_skipped(tmp_path / "s"))) == sorted(map(str, read_skipped(tmp_path / "whole")))


def run_cli(capsys, *args):
    capsys.readouterr()
    rc = main([str(a) for a in args])
    return (rc, *capsys.readouterr())


def test_cli_extract_and_run(demo, tmp_path, capsys):
    rc, out, err = run_cli(
        capsys,
        "run",
        *demo["inputs"],
        "--budget",
        "25%",
        "--out-dir",
        tmp_path / "out",
        "--workers",
        0,
        "--quiet",
    )
    assert rc == 0, err
    assert "extracted 40 vectors, 2 skipped (1 no image, 1 unreadable image)" in out
    from scalselect.data import read_pool
    from scalselect.select import read_scores

    subset = read_pool(tmp_path / "out" / "subset.json")
    ids, _ = read_scores(tmp_path / "out" / "scores.jsonl")
    assert len(subset) == 10 and set(subset.ids) == set(ids[:10])
    # --resume on a complete run goes straight on to scoring
    rc, out, err = run_cli(
        capsys,
        "run",
        *demo["inputs"],
        "--budget",
        "5",
        "--out-dir",
        tmp_path / "out",
        "--resume",
        "--quiet",
    )
    assert rc == 0, err
    assert "is already complete (40 vectors, 2 skipped" in out and len(read_pool(tmp_path / "out" / "subset.json")) == 5


@pytest.mark.parametrize(
    "change,message",
    [
        ({"--model": "NOMODEL"}, "not a checkpoint directory"),
        ({"--image-root": "NOROOT"}, "no such directory"),
        ({"--data": "NOPOOL"}, "no such file"),
        ({"--tau": "1.5"}, "--tau must be in"),
        ({"--batch-size": "0"}, "--batch-size must be at least 1"),
        ({"--dtype": "int8"}, "--dtype must be one of auto, bfloat16, float16, float32, not 'int8'"),
        ({"--store-dtype": "bfloat16"}, "bfloat16 cannot be stored"),
    ],
)
def test_cli_extract_errors_are_one_line(demo, tmp_path, capsys, change, message):
    args = {"--model": demo["model"], "--data": demo["pool"], "--image-root": demo["images"], "--out": tmp_path / "s"}
    args.update({k: (tmp_path / v if v.isupper() else v) for k, v in change.items()})
    rc, out, err = run_cli(capsys, "extract", *[x for kv in args.items() for x in kv], "--quiet")
    assert rc == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err


@pytest.mark.parametrize("family", [f for f in tiny.BUILDERS if f != "llava"])
def test_every_family_through_the_pipeline(demo, tmp_path, family):
    """Padded batches of each family's samples (its per-token tensors padded, its image tensors
    stacked, tiles or images of unequal counts zero-padded) give every sample its batch-size-1
    vector; the manifest records the layer probed, the first softmax-attention one."""
    from scalselect.models import first_softmax_layer
    from scalselect.models.load import read_config

    model = tiny.BUILDERS[family](tmp_path / "model")
    records = json.loads(Path(demo["pool"]).read_text())[:10]  # 1 or 2 images, multi-turn
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps(records))
    one = extract_store(model, pool, demo["images"], tmp_path / "one", opts(batch_size=1))
    extract_store(model, pool, demo["images"], tmp_path / "many", opts(batch_size=4))
    meta = read_manifest(tmp_path / "one")["meta"]
    assert one["rows"] == 10 and meta["layer"] == first_softmax_layer(read_config(model))
    assert_same_vectors(by_id(tmp_path / "one"), by_id(tmp_path / "many"), str(model))


def test_a_hybrid_decoder_loads_and_probes_its_first_softmax_layer(demo, tmp_path, capsys):
    """Qwen3.5: linear-attention layers first; the layers up to the first softmax one are
    loaded and probed; --layer picks a later softmax layer, and refuses a linear one."""
    from scalselect.models import first_softmax_layer
    from scalselect.models.load import load_checkpoint, read_config

    model_dir = tiny.BUILDERS["qwen3_5"](tmp_path / "model")
    config = read_config(model_dir)
    kinds = config.get_text_config().layer_types
    first = first_softmax_layer(config)
    assert first > 0 and kinds[first] == "full_attention" and set(kinds[:first]) == {"linear_attention"}
    _, model, adapter = load_checkpoint(model_dir, config, torch.device("cpu"), torch.float32, layer=first)
    assert len(adapter.decoder_layers(model)) == first + 1 < len(kinds)
    linear = kinds.index("linear_attention")
    args = extract_args(demo, tmp_path / "s")
    args[args.index("--model") + 1] = model_dir
    assert_one_line_error(capsys, [*args, "--layer", linear], f"--layer {linear}: that decoder layer is linear_attention")
    assert_one_line_error(capsys, [*args, "--layer", len(kinds)], f"decoder layers 0..{len(kinds) - 1}")


def test_weights_that_span_the_layers_are_cut_to_the_loaded_ones(demo, tmp_path):
    """Gemma 4 holds per-layer input embeddings for every decoder layer in one matrix: the
    loaded model keeps the probed layers' columns (and projection rows), and its vectors are the
    full model's, the reference way."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from scalselect import reference_way
    from scalselect.data import read_pool
    from scalselect.data.samples import SampleMaker, collate
    from scalselect.models import image_token_id
    from scalselect.models.load import load_checkpoint, read_config

    model_dir = tiny.BUILDERS["gemma4"](tmp_path / "model")
    config = read_config(model_dir)
    width, layers = config.get_text_config().hidden_size_per_layer_input, config.get_text_config().num_hidden_layers
    _, cut, adapter = load_checkpoint(model_dir, config, torch.device("cpu"), torch.float32, progress=False)
    assert len(adapter.decoder_layers(cut)) == 1 < layers
    full = AutoModelForImageTextToText.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32).eval()
    table = "model.language_model.embed_tokens_per_layer.weight"
    assert cut.state_dict()[table].shape[1] == width < full.state_dict()[table].shape[1]
    assert torch.equal(cut.state_dict()[table], full.state_dict()[table][:, :width])

    pool_path = tmp_path / "pool.json"
    pool_path.write_text(json.dumps(json.loads(Path(demo["pool"]).read_text())[:4]))
    extract_store(model_dir, pool_path, demo["images"], tmp_path / "s", opts(batch_size=2))
    got = by_id(tmp_path / "s")
    processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    maker = SampleMaker(processor, image_token_id(config), Path(demo["images"]), 2048)
    pool = read_pool(pool_path)
    for record, sample_id in zip(pool.records, pool.ids):
        batch, instruction = collate([maker(record, pool.layout, sample_id)], 0)
        batch = {k: v.float() if v.is_floating_point() else v for k, v in batch.items()}
        want = reference_way.reference_vector(full, batch, instruction, 0.9)[1]
        assert float(torch.nn.functional.cosine_similarity(torch.as_tensor(got[sample_id]).double(), want, dim=0)) >= 0.99999
    # a config that does not fit its weights (the per-layer width halved) is refused, not sliced
    record = json.loads((model_dir / "config.json").read_text())
    record["text_config"]["hidden_size_per_layer_input"] = width // 2
    (model_dir / "config.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match="has shape"):
        load_checkpoint(model_dir, read_config(model_dir), torch.device("cpu"), torch.float32, progress=False)


def _config_only(path: Path, config) -> Path:
    config.save_pretrained(path)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: __import__("transformers").MllamaConfig(architectures=["MllamaForConditionalGeneration"]),
            "MllamaForConditionalGeneration is not supported: the image reaches the language model through cross-attention",
        ),
        (
            lambda: __import__("transformers").Pix2StructConfig(architectures=["Pix2StructForConditionalGeneration"]),
            "Pix2StructForConditionalGeneration is not supported: an encoder-decoder model",
        ),
        (
            lambda: __import__("transformers").Qwen3_5Config(
                text_config={"num_hidden_layers": 2, "layer_types": ["linear_attention"] * 2}
            ),
            "no decoder layer has softmax attention (layer kinds: linear_attention)",
        ),
    ],
)
def test_models_that_cannot_be_probed_exactly_are_refused(demo, tmp_path, capsys, make, message):
    model = _config_only(tmp_path / "model", make())
    args = extract_args(demo, tmp_path / "s")
    args[args.index("--model") + 1] = model
    assert_one_line_error(capsys, args, message)
    assert not (tmp_path / "s").exists()


def extract_args(demo, out, *extra):
    return [
        "extract",
        *demo["inputs"],
        "--out",
        out,
        "--workers",
        0,
        "--quiet",
        "--device",
        "cpu",
        *extra,
    ]


def assert_one_line_error(capsys, args, message):
    rc, out, err = run_cli(capsys, *args)
    assert rc == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err, err


def test_resume_of_a_complete_store_checks_its_settings(demo, tmp_path, capsys):
    assert run_cli(capsys, *extract_args(demo, tmp_path / "s"))[0] == 0
    rc, out, _ = run_cli(capsys, *extract_args(demo, tmp_path / "s", "--resume"))
    assert rc == 0 and "already complete (40 vectors, 2 skipped" in out
    assert_one_line_error(
        capsys,
        extract_args(demo, tmp_path / "s", "--resume", "--tau", "0.3"),
        "made with other settings (tau: 0.9 then, 0.3 now)",
    )
    assert_one_line_error(capsys, extract_args(demo, tmp_path / "s"), "a store already exists here")


def test_a_store_made_before_the_layer_was_recorded_resumes(demo, tmp_path, capsys):
    """Such a store was made at layer 0: its missing setting counts as 0."""
    assert run_cli(capsys, *extract_args(demo, tmp_path / "s", "--shard-rows", "16"))[0] == 0
    manifest = tmp_path / "s" / "manifest.json"
    record = json.loads(manifest.read_text())
    assert record["meta"].pop("layer") == 0
    manifest.write_text(json.dumps(record))
    rc, out, err = run_cli(capsys, *extract_args(demo, tmp_path / "s", "--shard-rows", "16", "--resume"))
    assert rc == 0 and "already complete" in out, err
    assert_one_line_error(
        capsys, extract_args(demo, tmp_path / "s", "--shard-rows", "16", "--resume", "--layer", "1"), "layer: 0 then, 1 now"
    )


def test_resume_of_a_complete_store_redoes_a_damaged_part(demo, tmp_path, capsys):
    """A bit flipped in a finished store (a disk, a copy): --resume finds the part by its CRC,
    redoes its samples and completes the store again, with the same vectors and skips."""
    import shutil

    from scalselect.stores import damaged_parts

    assert run_cli(capsys, *extract_args(demo, tmp_path / "s", "--shard-rows", 8))[0] == 0
    shutil.copytree(tmp_path / "s", tmp_path / "whole")
    entry = read_manifest(tmp_path / "s")["shards"][1]
    shard = tmp_path / "s" / entry["vectors"]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x10
    shard.write_bytes(data)
    assert damaged_parts(tmp_path / "s") == [f"{entry['vectors'][:-4]}: {entry['vectors']}: its bytes do not match their CRC-32"]
    rc, out, err = run_cli(capsys, *extract_args(demo, tmp_path / "s", "--resume"))
    assert rc == 0, err
    assert err.strip() == (
        f"warning: {tmp_path / 's'}: part {entry['vectors'][:-4]} is corrupt ({entry['vectors']}: "
        "its bytes do not match their CRC-32); its samples are done again"
    )
    assert "extracted 40 vectors, 2 skipped" in out and f"[{entry['rows']} samples in" in out
    assert damaged_parts(tmp_path / "s") == []
    assert_same_vectors(by_id(tmp_path / "s"), by_id(tmp_path / "whole"), demo["model"])
    assert sorted(map(str, read_skipped(tmp_path / "s"))) == sorted(map(str, read_skipped(tmp_path / "whole")))


def copy_checkpoint(src, dst, drop: str | None = None, truncate: bool = False):
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    if drop:
        tensors = load_file(weights)
        del tensors[next(k for k in tensors if drop in k)]
        save_file(tensors, weights, metadata={"format": "pt"})
    if truncate:
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return dst


def test_a_checkpoint_without_layer0_weights_or_corrupt_is_refused(demo, tmp_path, capsys):
    base = Path(demo["model"])
    no_q = copy_checkpoint(base, tmp_path / "no-q", drop="layers.0.self_attn.q_proj")
    args = extract_args(demo, tmp_path / "s")
    args[args.index("--model") + 1] = no_q
    assert_one_line_error(capsys, args, "lacks 1 weights that layers 0..0 need")
    assert not (tmp_path / "s").exists()  # a failed start leaves no unfinished store behind
    # a weight of a later layer is not needed: only layer 0 is loaded
    no_l1 = copy_checkpoint(base, tmp_path / "no-l1", drop="layers.1.mlp.up_proj")
    args[args.index("--model") + 1] = no_l1
    assert run_cli(capsys, *args)[0] == 0
    cut = copy_checkpoint(base, tmp_path / "cut", truncate=True)
    args = extract_args(demo, tmp_path / "s2")
    args[args.index("--model") + 1] = cut
    assert_one_line_error(capsys, args, "cannot load it")


def test_only_layer_0_is_loaded(demo):
    from scalselect.models.load import load_checkpoint, read_config

    config = read_config(demo["model"])
    _, model, adapter = load_checkpoint(demo["model"], config, torch.device("cpu"), torch.float32)
    assert len(adapter.decoder_layers(model)) == 1 and config.text_config.num_hidden_layers == 2


def test_one_store_has_one_writer(tmp_path):
    writer = StoreWriter(tmp_path / "s", 4, "float32")
    with pytest.raises(InputError, match="another process is writing this store"):
        StoreWriter(tmp_path / "s", 4, "float32", resume=True)
    writer.add(np.ones((2, 4)), ["a", "b"])
    writer.close()
    assert not (tmp_path / "s" / ".lock").exists()
    assert_same_vectors(by_id(tmp_path / "s"), {"a": np.ones(4), "b": np.ones(4)})


def test_a_store_is_reopened_for_repair_only_when_no_one_writes_it(tmp_path):
    from scalselect.stores import damaged_parts, reopen_store

    writer = StoreWriter(tmp_path / "s", 4, "float32")
    writer.add(np.ones((2, 4)), ["a", "b"])
    writer.close()
    import fcntl

    with open(tmp_path / "s" / ".lock", "a+") as busy:  # another job holds the store's lock
        fcntl.flock(busy, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(InputError, match="another process is writing this store"):
            reopen_store(tmp_path / "s", 4, "float32", {})
        assert read_manifest(tmp_path / "s")["num_rows"] == 2  # untouched
    assert damaged_parts(tmp_path / "s") == []
    reopen_store(tmp_path / "s", 4, "float32", {})
    assert not (tmp_path / "s" / "manifest.json").exists() and (tmp_path / "s" / "progress.json").exists()


def test_an_unfinished_store_is_named_as_such(demo, tmp_path, capsys):
    writer = StoreWriter(tmp_path / "s", 4, "float32")
    writer.add(np.ones((2, 4)), ["a", "b"])
    writer.abandon()
    assert_one_line_error(
        capsys, ["score", tmp_path / "s", "--out", tmp_path / "x.jsonl"], "an unfinished extraction (no manifest.json yet)"
    )


def test_odd_samples_and_failing_forwards_become_skips(demo, tmp_path, monkeypatch):
    import scalselect.pipeline as pipeline

    records = json.loads(Path(demo["pool"]).read_text())[:12]
    import scalselect.data.samples as samples

    records[3]["image"] = "coco/a\u0000b.png"  # no file can have that name
    records[5]["image"] = "coco/odd.png"
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps(records))
    victim = records[7]["id"]
    real_forward, real_open = pipeline.BatchJob.forward, samples.open_image

    def open_image(ref, *args):  # an exception nobody foresaw, in one sample
        if ref == "coco/odd.png":
            raise KeyError("unforeseen")
        return real_open(ref, *args)

    monkeypatch.setattr(samples, "open_image", open_image)

    def forward(job, samples):
        if any(s.sample_id == victim for s in samples):
            raise RuntimeError("simulated CUDA error")
        return real_forward(job, samples)

    monkeypatch.setattr(pipeline.BatchJob, "forward", forward)
    summary = extract_store(demo["model"], pool, demo["images"], tmp_path / "s", opts(batch_size=4))
    skipped = {s["sample_id"]: (s["reason"], s["detail"]) for s in read_skipped(tmp_path / "s")}
    assert skipped[victim] == ("forward error", "RuntimeError: simulated CUDA error")
    assert skipped[records[3]["id"]][0] == "bad record" and "null" in skipped[records[3]["id"]][1]
    assert skipped[records[5]["id"]] == ("sample error", "KeyError: 'unforeseen'")
    assert summary["rows"] == 9 and summary["skipped"] == 3  # the victim's batch-mates redone alone


def test_a_wrong_image_root_stops_early(demo, tmp_path):
    records = [{"id": i, "image": f"img{i}.png", "conversations": turn("<image>\nWhat?")} for i in range(150)]
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps(records))
    with pytest.raises(InputError, match="the first 100 samples all failed .*unreadable image.*check --image-root"):
        extract_store(demo["model"], pool, tmp_path, tmp_path / "s", opts())
    assert not (tmp_path / "s").exists()


def test_run_checks_the_budget_before_extracting(demo, tmp_path, capsys):
    assert_one_line_error(
        capsys,
        [
            "run",
            *demo["inputs"],
            "--budget",
            "abc",
            "--out-dir",
            tmp_path / "out",
        ],
        "budget 'abc'",
    )
    assert not (tmp_path / "out").exists()


VICUNA = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


def test_the_system_prompt_is_rendered_as_an_instruction_where_a_sample_has_none(demo):
    from transformers import AutoProcessor

    from scalselect.data.samples import SampleMaker

    processor = AutoProcessor.from_pretrained(demo["model"], local_files_only=True)
    image_token = processor.tokenizer.convert_tokens_to_ids("<image>")
    plain = SampleMaker(processor, image_token, demo["images"], 2048)
    prompted = SampleMaker(processor, image_token, demo["images"], 2048, system_prompt=VICUNA)
    record = json.loads(Path(demo["pool"]).read_text())[0]
    a, b = plain(record, "llava", "x"), prompted(record, "llava", "x")
    extra = b.length - a.length
    assert extra > 0
    text = processor.tokenizer.decode(b.inputs["input_ids"][0][: extra + 1])
    assert VICUNA in text  # first, before the user's turn
    assert bool(b.instruction[:extra].all())  # system tokens are instruction tokens
    # a record's own system turn wins: no second one
    own = {**record, "conversations": [{"from": "system", "value": "Be brief."}, *record["conversations"]]}
    messages, _ = prompted.messages(own, "llava")
    assert [m["role"] for m in messages].count("system") == 1 and messages[0]["content"][0]["text"] == "Be brief."


def test_system_prompt_and_chat_template_change_the_vectors_and_are_recorded(demo, tmp_path, capsys):
    from scalselect.models.tiny import LLAVA_CHAT_TEMPLATE

    assert run_cli(capsys, *extract_args(demo, tmp_path / "plain"))[0] == 0
    rc, _, err = run_cli(capsys, *extract_args(demo, tmp_path / "sys", "--system-prompt", VICUNA))
    assert rc == 0, err
    assert read_manifest(tmp_path / "sys")["meta"]["system_prompt"] == VICUNA
    plain, prompted = by_id(tmp_path / "plain"), by_id(tmp_path / "sys")
    rtol = forward_rtol(AutoConfig.from_pretrained(demo["model"], local_files_only=True))
    assert all(np.abs(plain[k] - prompted[k]).max() > 100 * rtol * np.abs(plain[k]).max() for k in plain)
    # another prompt on --resume is another store
    assert_one_line_error(
        capsys,
        extract_args(demo, tmp_path / "sys", "--resume", "--system-prompt", "Hi."),
        "made with other settings (system_prompt:",
    )

    template = LLAVA_CHAT_TEMPLATE.replace("USER: ", "HUMAN: ")
    (tmp_path / "t.jinja").write_text(template, encoding="utf-8")
    (tmp_path / "t.json").write_text(json.dumps({"chat_template": template}), encoding="utf-8")
    for name in ("t.jinja", "t.json"):
        out = tmp_path / f"store-{name}"
        rc, _, err = run_cli(capsys, *extract_args(demo, out, "--chat-template", tmp_path / name))
        assert rc == 0, err
        assert read_manifest(out)["meta"]["chat_template"] == template
    named = tmp_path / "tokenizer_config.json"  # named templates: the default one
    named.write_text(
        json.dumps({"chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": template}]}),
        encoding="utf-8",
    )
    assert run_cli(capsys, *extract_args(demo, tmp_path / "store-named", "--chat-template", named))[0] == 0
    assert read_manifest(tmp_path / "store-named")["meta"]["chat_template"] == template
    # another template on --resume: one short line naming the templates' digests
    (tmp_path / "other.jinja").write_text(template.replace("HUMAN", "PERSON"), encoding="utf-8")
    assert_one_line_error(
        capsys,
        extract_args(demo, tmp_path / "store-named", "--resume", "--chat-template", tmp_path / "other.jinja"),
        "chat_template_sha256",
    )
    a, b = by_id(tmp_path / "store-t.jinja"), by_id(tmp_path / "store-t.json")
    assert all(np.array_equal(a[k], b[k]) for k in a)  # the same template from either file
    assert all(not np.array_equal(a[k], plain[k]) for k in a)


@pytest.mark.parametrize(
    "body,message",
    [
        ("{% for m in messages %}", "--chat-template cannot render a conversation (TemplateSyntaxError"),
        ("{{ messages[0]['role'] }}", "does not render the replies where they can be told from the instruction"),
        ("{% for m in messages %}{{ m['content'] }}{% endfor %}", "does not render the replies"),
        ("   ", "empty"),
    ],
)
def test_a_template_that_cannot_serve_is_one_line_before_any_work(demo, tmp_path, capsys, monkeypatch, body, message):
    import transformers

    def no_weights(*args, **kwargs):
        raise AssertionError("the weights were read before the template was checked")

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", no_weights)
    (tmp_path / "t.jinja").write_text(body, encoding="utf-8")
    assert_one_line_error(capsys, extract_args(demo, tmp_path / "s", "--chat-template", tmp_path / "t.jinja"), message)
    assert not (tmp_path / "s").exists()


def test_prompt_options_that_are_not_text_are_one_line(demo, tmp_path, capsys):
    (tmp_path / "t.json").write_text(json.dumps({"template": "x"}), encoding="utf-8")
    assert_one_line_error(
        capsys, extract_args(demo, tmp_path / "s", "--chat-template", tmp_path / "t.json"), 'without a "chat_template" string'
    )
    assert_one_line_error(capsys, extract_args(demo, tmp_path / "s", "--chat-template", tmp_path / "none.jinja"), "no such file")
    assert_one_line_error(
        capsys, extract_args(demo, tmp_path / "s", "--system-prompt", "\udcff"), "--system-prompt: not valid UTF-8 text"
    )
