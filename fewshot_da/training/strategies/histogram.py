"""`histogram`: no labels: target intensities are mapped onto the source training set's histogram before scoring.

The SpotTUnet paper's `hm` baseline. The mapping is a preprocessing option (`fewshot_da.data.harmonize`), so it is
recorded in run.yaml and cached like the other options; the reference is fitted on the source run's train scans.
"""


def build(model, arch, options, Strategy):
    from . import check_options
    from ...data.harmonize import histogram_preprocess

    return Strategy("histogram", check_options("histogram", options, ()), None, preprocess=histogram_preprocess)
