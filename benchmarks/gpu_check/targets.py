"""The GPU targets (to be verified on an H200), and this run's values against them."""

from .record import step_entries

TARGET_EXTRACTION_RATIO = 20.0
TARGET_KERNEL_RATIO = 1.0
TARGET_GRAM_PROJECTION_S = 1.0


def targets(steps: dict, evaluate: bool = True) -> list:
    """The GPU targets against what this run measured (met: null when not measured, and
    always in a dry run, whose tiny CPU sizes say nothing about them)."""
    rows = []
    ex = steps.get("extraction", {}).get("info", {})
    rows.append(
        {
            "target": f"extraction >= {TARGET_EXTRACTION_RATIO:g}x the reference way's samples/s",
            "value": ex.get("ratio_ours_over_reference"),
            "met": ex.get("meets_target"),
        }
    )
    for e in step_entries(steps.get("kernels", {})):
        if "kernel" in e:
            rows.append(
                {
                    "target": f"{e['name']} >= {TARGET_KERNEL_RATIO:g}x its twin",
                    "value": e.get("ratio"),
                    "met": None if e.get("ratio") is None else e["ratio"] >= TARGET_KERNEL_RATIO,
                }
            )
    for e in step_entries(steps.get("leverage", {})):
        if e["name"] == "scalselect":
            rows.append(
                {
                    "target": f"Gram + projection for {e.get('rows')} x D in <= {TARGET_GRAM_PROJECTION_S:g} s",
                    "value": e.get("gram_plus_projection_s"),
                    "met": e.get("meets_target"),
                }
            )
    if not evaluate:
        for row in rows:
            row["met"] = None
    return rows
