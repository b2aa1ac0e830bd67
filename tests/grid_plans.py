"""A tiny phantoms plan shared by tests/experiments/test_grid.py and tests/experiments/test_slurm.py (seconds per run)."""


def tiny_plan(**changes) -> dict:
    """One pair (siemens3 -> ge15), first/all layers, budgets 1 and 1/4, one seed, the 3 oracle folds of both
    domains: 1 source + 6 oracles + 1 baseline + 4 adapted runs. Fine-tuning has 3 epochs so a run can be
    interrupted between its checkpoints. No augmented-source baseline (tested on its own in test_grid.py)."""
    plan = {
        "base": "phantoms",
        "name": "tiny",
        "data": {"domains": ["siemens3", "ge15"], "scans_per_domain": 6, "shape": [24, 24, 8]},
        "sources": ["siemens3"],
        "targets": ["ge15"],
        "strategies": ["first", "all"],
        "budgets": ["1", "1/4"],
        "seeds": [0],
        "augmented_baseline": None,
        "schedules": {
            "source": {"epochs": 2, "iters_per_epoch": 4, "batch_size": 4, "crop": 24},
            "finetune": {"epochs": 3, "iters_per_epoch": 2, "batch_size": 4, "crop": 24},
        },
    }
    plan.update(changes)
    return plan
