"""The Python half of benchmarks/gpu_check.sh, one module per concern:

    __main__.py    the command line (step / record / report), run as `python benchmarks/gpu_check ...`
    sizes.py       what each mode (full, quick, dry) runs on and how big
    record.py      the per-step files: a Python step's entries as it goes, the shell's record of a step
    machine.py     facts about the machine (GPU, torch, the scalselect imported and its build)
    device.py      the mode's device; timing and peak memory there, synchronised for CUDA
    kernels.py     step "kernels": the four kernels against their PyTorch twins
    leverage.py    step "leverage": the whole scoring engine on a decaying-spectrum matrix
    extraction.py  step "extraction": end to end on a LLaVA-1.5-7B-shaped model vs the reference way
    targets.py     the GPU targets and the run's values against them
    report.py      the steps joined into DIR/report.json, and the table printed last

torch is imported by the steps only, so `record` and `report` start fast.
"""
