import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """CUDA tests run only where a GPU and the CUDA kernels are present."""
    from scalselect.kernels import build_info

    if torch.cuda.is_available() and build_info()["cuda"]:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU and scalselect built with CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def demo(request, tmp_path_factory):
    """The demo's generated pool (multi-turn, some two-image samples, one text-only, one missing
    image file), its images and its tiny LLaVA, made once per test module, of the module's
    DEMO_SAMPLES samples (40 unless it says): {"pool", "images", "model", "run", "records",
    "inputs"}, the last the command-line arguments that name the model, the pool and its images."""
    import json

    from scalselect.demo import prepare_demo

    made = prepare_demo(tmp_path_factory.mktemp("demo"), n=getattr(request.module, "DEMO_SAMPLES", 40))
    made["records"] = json.loads(made["pool"].read_text(encoding="utf-8"))
    made["inputs"] = ["--model", str(made["model"]), "--data", str(made["pool"]), "--image-root", str(made["images"])]
    return made


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The demo's pool (150 samples) and tiny LLaVA, through `scalselect run`: (demo, run folder)."""
    from scalselect.cli import main
    from scalselect.demo import prepare_demo

    demo = prepare_demo(tmp_path_factory.mktemp("demo-run"), n=150)
    run = demo["run"]
    assert (
        main(
            [
                "run",
                "--model",
                str(demo["model"]),
                "--data",
                str(demo["pool"]),
                "--image-root",
                str(demo["images"]),
                "--budget",
                "16%",
                "--out-dir",
                str(run),
                "--workers",
                "0",
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    return demo, run
