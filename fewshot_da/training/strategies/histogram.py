"""`histogram`: no labels: target intensities are mapped onto the source training set's histogram before scoring.

The SpotTUnet paper's `hm` baseline (Nyul-Udupa piecewise-linear matching, `fewshot_da.data.harmonize`). The
reference is fitted once on the source run's train scans and kept in the source run folder
(`histogram_reference.json`); the mapping is a preprocessing option of the target's volumes, so it is recorded in
run.yaml and cached like the other options.
"""
from pathlib import Path

from ...data.harmonize import fit_histogram_reference, save_histogram_reference
from ...data.volumes import open_volumes
from .base import Strategy, check_options

REFERENCE_FILE = "histogram_reference.json"


def source_reference(options, parent_dir, parent_spec: dict):
    """Preprocessing `options` plus histogram matching onto the source run's reference (fitted on first use from
    the train scans its spec `parent_spec` names)."""
    path = Path(parent_dir) / REFERENCE_FILE
    if not path.is_file():
        volumes = open_volumes(parent_spec["manifest"], parent_spec["train_ids"], cache=parent_spec["cache"],
                               preprocess=options, progress=False)
        save_histogram_reference(fit_histogram_reference(volumes), path, source_ids=list(parent_spec["train_ids"]))
    return options.replace(histogram=str(path.resolve()))


def build(model, arch, options, *, budget=None):
    return Strategy("histogram", check_options("histogram", options, ()), None, preprocess=source_reference)
