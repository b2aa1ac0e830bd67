"""Bad values of the options this wave added (--model, --num-threads, data subset, --spacing-mm, --one-scan-folds,
--min-gap): one error line naming the option or file, never a traceback, never a silent default."""
import nibabel as nib
import numpy as np
import pytest

NETS = "tests/anatomy_nets.py"


@pytest.fixture
def files(tmp_path):
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[2:6, 2:6, 2:6] = 1
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "a.nii.gz")
    (tmp_path / "m.csv").write_text("id,image,mask,domain\na,a.nii.gz,a.nii.gz,x\n")
    return tmp_path


CASES = [
    ("model-missing-file", lambda d: ["layers", "--model", f"{d}/missing.py:f"], r"--model .*missing\.py not found"),
    ("model-missing-factory", lambda d: ["layers", "--model", f"{NETS}:nope"], r"has no callable 'nope'"),
    ("model-no-factory", lambda d: ["layers", "--model", NETS], r"expected module:factory"),
    ("model-factory-fails", lambda d: ["layers", "--model", f"{NETS}:SkipConnection"], r"SkipConnection\(\) failed"),
    ("threads-zero-eval", lambda d: ["eval", "--gt", f"{d}/a.nii.gz", "--pred", f"{d}/a.nii.gz", "--num-threads", "0"],
     r"--num-threads"),
    ("threads-negative-train", lambda d: ["train", "--data", f"{d}/m.csv", "--splits", f"{d}/m.csv", "--source", "x",
                                          "--out", f"{d}/t", "--num-threads", "-2"], r"--num-threads"),
    ("threads-zero-grid", lambda d: ["experiment", "run", "phantoms", "--out", f"{d}/g", "--num-threads", "0",
                                     "--dry-run"], r"--num-threads"),
    ("subset-unknown-domain", lambda d: ["data", "subset", f"{d}/m.csv", "--out", f"{d}/s.csv", "--domain", "nope"],
     r"--domain 'nope' names no scan"),
    ("subset-unknown-id", lambda d: ["data", "subset", f"{d}/m.csv", "--out", f"{d}/s.csv", "--ids", "zz"],
     r"--ids: 'zz' is not an id"),
    ("subset-no-filter", lambda d: ["data", "subset", f"{d}/m.csv", "--out", f"{d}/s.csv"], r"give --domain and/or --ids"),
    ("phantoms-zero-spacing", lambda d: ["data", "phantoms", f"{d}/ph", "--spacing-mm", "0", "1", "1"],
     r"spacing_mm .* positive"),
    ("one-scan-folds-unknown", lambda d: ["recommend", "--model", str(d), "--data", f"{d}/m.csv", "--out", f"{d}/r",
                                          "--one-scan-folds", "bogus"], r"--one-scan-folds"),
    ("min-gap-negative", lambda d: ["report", str(d), "--out", f"{d}/rep", "--min-gap", "-1"], r"--min-gap"),
]


@pytest.mark.parametrize("name, args, message", CASES, ids=[c[0] for c in CASES])
def test_a_bad_new_option_is_one_line(files, cli_runner, cli_app, name, args, message):
    import re

    result = cli_runner.invoke(cli_app, args(files))
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output and len(errors) == 1, result.output
    assert re.search(message, errors[0]), errors[0]
