"""`histogram`: no labels: target intensities are mapped onto the source training set's histogram before scoring.

The SpotTUnet paper's `hm` baseline (Nyul-Udupa piecewise-linear matching, `fewshot_da.data.harmonize`). The
reference is fitted once on the source run's train scans and kept in the source run folder
(`histogram_reference.json`); the mapping is a preprocessing option of the target's volumes, so it is recorded in
run.yaml and cached like the other options.
"""
from pathlib import Path

REFERENCE_FILE = "histogram_reference.json"


def source_reference(options, parent_dir):
    """Preprocessing `options` plus histogram matching onto the source run's reference (fitted on first use)."""
    from ...data.harmonize import fit_histogram_reference, save_histogram_reference
    from ...experiments.run_folder import read_run
    from ...experiments.stages import open_volumes

    path = Path(parent_dir) / REFERENCE_FILE
    if not path.is_file():
        spec = read_run(parent_dir)["spec"]
        volumes = open_volumes(spec["manifest"], spec["train_ids"], cache=spec["cache"], preprocess=options,
                               progress=False)
        save_histogram_reference(fit_histogram_reference(volumes), path, source_ids=list(spec["train_ids"]))
    return options.replace(histogram=str(path.resolve()))


def build(model, arch, options, Strategy):
    from . import check_options

    return Strategy("histogram", check_options("histogram", options, ()), None, preprocess=source_reference)
