"""The docs cannot go stale: the guide's "your data" commands run on phantom data, the README shows the same
commands, the guide's example plan loads, and the README's command table lists every verb of `fewshot-da --help`.

A fenced block is tested when an HTML comment `<!-- tested: NAME ... -->` stands right before it. The
"your-data" block is run with bash in a temporary folder, with two substitutions (also stated on the guide page):
the values its first lines assign (`LAYOUT`, `ROOT`, `SOURCE`, `TARGET`, `TARGET_MASKS`) become a small
phantom dataset, and every `fewshot-da train|adapt|recommend|predict|eval` line gets TINY[verb] appended (click
takes the last value of an option given twice, so these shorten the schedule without editing the page).
"""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import cli_script

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "guide" / "your-data.md"
EXPERIMENTS = ROOT / "docs" / "guide" / "experiments.md"
README = ROOT / "README.md"

_SCHEDULE = "--epochs 2 --iters-per-epoch 1 --lr-steps 0:0.1 --batch-size 2 --crop 32 --num-threads 1 --quiet"
TINY = {
    "train": _SCHEDULE,
    "adapt": _SCHEDULE,
    "recommend": _SCHEDULE + " --strategies first,adabn --max-folds 2 --curve-points 2 --no-shift-map",
    "predict": "--num-threads 1 --quiet",
    "eval": "--num-threads 1",
}
VARIABLES = ("LAYOUT", "ROOT", "SOURCE", "TARGET", "TARGET_MASKS")



def fenced_block(path: Path, name: str) -> str:
    """The fenced block right after `<!-- tested: name ... -->` in `path` (its lines, without the fences)."""
    text = path.read_text()
    match = re.search(r"<!-- tested: " + re.escape(name) + r"\b[^>]*-->\s*\n```[a-z]*\n(.*?)\n```", text, re.S)
    assert match, f"{path.name}: no fenced block after <!-- tested: {name} -->"
    return match.group(1)


def _logical_lines(block: str) -> list:
    """Shell lines with backslash continuations joined."""
    return block.replace("\\\n", " ").splitlines()


def fewshot_da_path(tmp_path: Path) -> str:
    """A bin folder holding a `fewshot-da` that runs this checkout, for the front of PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "fewshot_da_shim.py").write_text(cli_script(ROOT))
    script = bin_dir / "fewshot-da"
    script.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(bin_dir / "fewshot_da_shim.py"))} "$@"\n')
    script.chmod(0o755)
    return str(bin_dir)


def substituted_script(block: str, values: dict) -> str:
    """The your-data block with the first line's values replaced and the tiny schedule appended."""
    lines = _logical_lines(block)
    head = 0
    while head < len(lines) and not lines[head].startswith("fewshot-da"):
        head += 1
    assigned = dict(re.findall(r"(\w+)=(\S+)", " ".join(line.split("#", 1)[0] for line in lines[:head])))
    assert tuple(assigned) == VARIABLES, f"the block's first lines set {tuple(assigned)}, the test expects {VARIABLES}"
    out = ["set -euo pipefail", " ".join(f"{k}={shlex.quote(str(values[k]))}" for k in VARIABLES)]
    for line in lines[head:]:
        words = line.split()
        if len(words) > 1 and words[0] == "fewshot-da" and words[1] in TINY:
            assert "#" not in line, f"a comment on a tested command line would swallow the tiny schedule: {line}"
            line = f"{line} {TINY[words[1]]}"
        out.append(line)
    return "\n".join(out) + "\n"


def test_readme_shows_the_guides_tested_commands():
    assert fenced_block(README, "your-data") == fenced_block(GUIDE, "your-data")


def test_your_data_commands_run_on_phantoms(tmp_path):
    """The five steps of docs/guide/your-data.md end to end on 5 phantom scans per scanner (32 x 32 x 8)."""
    bin_dir = fewshot_da_path(tmp_path)
    env = {"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path),
           "PYTHONDONTWRITEBYTECODE": "1"}
    work = tmp_path / "work"
    work.mkdir()
    phantoms = tmp_path / "phantoms"
    made = subprocess.run(["fewshot-da", "data", "phantoms", str(phantoms), "--scans-per-domain", "5",
                           "--shape", "32,32,8"], env=env, cwd=work, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    values = {"LAYOUT": "cc359", "ROOT": phantoms, "SOURCE": "siemens3", "TARGET": "ge15",
              "TARGET_MASKS": phantoms / "masks"}
    script = substituted_script(fenced_block(GUIDE, "your-data"), values)
    (tmp_path / "your-data.sh").write_text(script)
    result = subprocess.run(["bash", str(tmp_path / "your-data.sh")], env=env, cwd=work, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"{script}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"

    for path in ("data.csv", "splits.json", "runs/source/summary.json", "rec/report.md", "rec/recommendation.json",
                 "rec/ranking.csv", "runs/adapted/summary.json", "eval/metrics.csv", "eval/summary.json"):
        assert (work / path).is_file(), f"{path} missing after the guide's commands"
    assert "recommended: " in result.stdout
    predictions = sorted(p.name for p in (work / "preds" / "predictions").glob("*.nii.gz"))
    test_ids = yaml.safe_load((work / "runs" / "adapted" / "run.yaml").read_text())["spec"]["eval_ids"]
    assert predictions == sorted(f"{i}.nii.gz" for i in test_ids)
    rows = (work / "eval" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("case,dice,surface_dice_1mm,surface_dice_2mm")
    assert sorted(r.split(",")[0] for r in rows[1:]) == sorted(test_ids)


def test_guide_example_plan_loads_and_every_plan_key_is_documented():
    from fewshot_da.experiments.plans import DEFAULTS, load_plan

    plan = load_plan(yaml.safe_load(fenced_block(EXPERIMENTS, "plan")))
    assert plan["sources"] == ["siemens3"] and plan["augmented_baseline"] is None
    text = EXPERIMENTS.read_text()
    missing = [k for k in ["base", *DEFAULTS] if f"| `{k}` |" not in text]
    assert not missing, f"docs/guide/experiments.md's plan-key table lacks {missing}"


def _help_commands(args: list) -> list:
    """The command names `fewshot-da ARGS --help` lists under "Commands:" ([] for a verb without subcommands)."""
    from click.testing import CliRunner

    from fewshot_da_cli.main import cli

    result = CliRunner().invoke(cli, args + ["--help"])
    assert result.exit_code == 0, result.output
    if "Commands:" not in result.output:
        return []
    section = result.output.split("Commands:", 1)[1]
    return [line.split()[0] for line in section.splitlines() if line.startswith("  ") and line.split()]


def test_readme_command_table_lists_every_verb():
    """Every verb and subcommand of `fewshot-da --help` has a row `| `fewshot-da VERB ...` in the README."""
    section = README.read_text().split("\n## Commands", 1)[1].split("\n## ", 1)[0]
    rows = [re.match(r"\| `fewshot-da ([a-z][a-z-]*(?: [a-z][a-z-]*)?)", line) for line in section.splitlines()]
    listed = {row.group(1) for row in rows if row}
    verbs = []
    for name in _help_commands([]):
        verbs += [f"{name} {sub}" for sub in _help_commands([name])] or [name]
    assert {"train", "adapt", "data index", "experiment run", "experiment status"} <= set(verbs)
    missing = [verb for verb in verbs if verb not in listed]
    assert not missing, f"README's command table lacks {missing}"


def test_docs_site_builds_strict(tmp_path):
    """`mkdocs build --strict` (as .ci/run): every link and anchor resolves and every page is in the nav. Not
    --quiet: mkdocs counts only the warnings it logs, so a quiet strict build passes with broken links."""
    pytest.importorskip("mkdocs", reason="mkdocs is in the test extra; pip install -e '.[docs]'")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "guide" / "your-data" / "index.html").is_file()


def test_readme_links_point_at_files():
    """The README's relative links (into docs/) name files that exist (mkdocs checks the links inside docs/)."""
    links = re.findall(r"\]\(([^)#\s]+)(#[^)\s]*)?\)", README.read_text())
    relative = [(path, anchor) for path, anchor in links if not re.match(r"[a-z]+:", path)]
    assert len(relative) >= 8
    missing = [path for path, _ in relative if not (ROOT / path).is_file()]
    assert not missing, f"README links to missing files {missing}"
