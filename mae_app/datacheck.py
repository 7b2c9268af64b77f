"""`tools/check_data.py`: a detection or segmentation config's data checked as its training run
would read it, in seconds, before a run of days. The checks are the adapters' own
(`detection.data.check_data_tree`, `segmentation.data.check_data_tree`), which reuse the refusals
training gives; the framework is imported only for the task asked."""

from __future__ import annotations

from mae_core.datacheck import DataCheckError, SplitReport, raise_if_problems

TASKS = ("detection", "segmentation")


def check_data(task: str, config: str, overrides: list[str] | dict | None = None) -> list[SplitReport]:
    """The reports of `config`'s splits (with `overrides`: `key=value` strings for detection, a
    `--cfg-options` dict for segmentation). Raises `DataCheckError` listing every problem found,
    in the config and its overrides too."""
    if task == "detection":
        from detection.data import CocoDatasetError, check_data_tree
        from detection.overrides import OverrideError, load_lazy_config

        config_errors = (CocoDatasetError, OverrideError)
        load = lambda: load_lazy_config(config, list(overrides or []))  # noqa: E731
    elif task == "segmentation":
        from segmentation.data import DatasetError, check_data_tree
        from segmentation.overrides import ConfigOverrideError
        from segmentation.train import load_mmseg_config

        config_errors = (ConfigOverrideError, DatasetError)
        load = lambda: load_mmseg_config(config, cfg_options=overrides)  # noqa: E731
    else:
        raise DataCheckError(f"task {task!r}: expected one of {TASKS}")
    try:
        reports, problems = check_data_tree(load())
    except config_errors as exc:
        raise DataCheckError(str(exc)) from exc
    for report in reports:
        print(report.summary())
    raise_if_problems(reports, problems)
    return reports


__all__ = ["TASKS", "check_data"]
