"""An experiment grid: a plan expanded into frozen run specs with stable ids, run folders and results.csv.

Layout of a grid folder DIR: `grid.json` (plan, data and every spec), `data/` (generated or indexed data,
manifest, splits; `ready.json` names them with their sha256 and the plan's `data`), `cache/` (preprocessed
volumes), `runs/<run id>/` (one run folder each, see stages.py, plus `spec.json`, `grid_run.json` (the data,
preset, preprocessing and tolerances it was made with, and its CPU thread count), `error.txt` on failure and
`.grid-lock` while a grid worker holds it, with its pid and host) and `results.csv`.

A re-run refuses a folder made from other data or settings (naming what differs) before it runs anything.

Run ids: `source/<arch>/<domain>`, `oracle/<arch>/<domain>/f<fold>`, `baseline/<arch>/<source>-<target>`,
`adapt/<arch>/<source>-<target>/<method>/<budget>/s<seed>` (budget 1/8 written 1_8). Source models are shared
by their baseline and adapted runs; a run whose `summary.json` parses is finished and never recomputed.

One module a job: `specs` (plan -> run specs), `data` (the grid's data, prepared once), `runs` (one run: folder,
identity, execution, rows, failure line), `state` (the folder as a whole: open, results.csv, status).
"""
from .data import data_digests, prepare_data, preprocess_all
from .runs import (CORRUPT, IDENTITY_KEYS, RUN_IDENTITY, SUMMARY, check_existing, execute_run, held_result, is_done,
                   result_rows, run_dir, run_failure, run_identity)
from .specs import (GRID_FILE, GRID_LOCK, KINDS, RESULTS, RunSpec, available_strategies, budget_slug, build_specs,
                    parse_budget)
from .state import (STATES, collect_results, finish_results, format_status, grid_status, load_grid, open_grid,
                    run_state, thread_warning)

__all__ = ["CORRUPT", "GRID_FILE", "GRID_LOCK", "IDENTITY_KEYS", "KINDS", "RESULTS", "RUN_IDENTITY", "STATES",
           "SUMMARY", "RunSpec", "available_strategies", "budget_slug", "build_specs", "check_existing",
           "collect_results", "data_digests", "execute_run", "finish_results", "format_status", "grid_status",
           "held_result", "is_done", "load_grid", "open_grid", "parse_budget", "prepare_data", "preprocess_all",
           "result_rows", "run_dir", "run_failure", "run_identity", "run_state", "thread_warning"]
