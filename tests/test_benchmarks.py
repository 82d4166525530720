"""The benchmark commands run end to end on tiny sizes, so they never rot (figures: benchmarks/RESULTS.md)."""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO

CASES_RUN = ["tiny", "iwae5", "nb-counts", "jit-tiny"]  # one per code path (MLP/Bernoulli, IWAE, counts, compiled)


@pytest.mark.parametrize("tuned", [False, True])
def test_training_benchmark_runs_and_reports_every_case(tmp_path, tuned):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_train.py"), "--quick", "--cases",
                           ",".join(CASES_RUN if not tuned else CASES_RUN[:1]), "--out", str(tmp_path)]
                          + (["--tune-allocator"] if tuned else []), capture_output=True, text=True, timeout=600,
                          cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "train.json").read_text())
    assert report["meta"]["tuned_allocator"] is tuned
    if tuned:
        assert "glibc thresholds raised" in (tmp_path / "train.md").read_text()
        return
    assert [r["case"] for r in report["rows"]] == CASES_RUN
    for row in report["rows"]:
        for key in ("lib_step_ms", "ref_step_ms", "lib_epoch_s", "ref_epoch_s", "lib_peak_rss_mib",
                    "ref_peak_rss_mib"):
            assert row[key] > 0, (row["case"], key)
        assert row["step_ratio"] == row["lib_step_ms"] / row["ref_step_ms"]
    assert "| tiny |" in (tmp_path / "train.md").read_text()


def test_soak_runs_random_configs_and_reports(tmp_path):
    """A few soak runs, so the soak command never rots (its long runs are recorded in benchmarks/RESULTS.md)."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "soak.py"), "--runs", "4", "--seed", "5",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "soak.json").read_text())
    assert report["runs"] == 4 and report["ok"] + report["refused"] == 4 and report["failed"] == 0
    assert report["ok"] >= 1


def test_quality_benchmark_runs_and_its_two_estimators_agree(tmp_path):
    """The MNIST quality benchmark on digits: every model reported; the library's IWAE estimator and the
    hand-written one agree on the same model, and the library trains as well as the hand-written loop."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_quality.py"), "--quick", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "quality.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["vae", "vamp", "two"]
    for r in rows:
        assert abs(r["lib_nll"] - r["lib_nll_by_reference_estimator"]) < 0.5, r
        assert r["lib_nll"] < r["ref_nll"] + 1.0, r  # no worse than the reference at equal epochs (+ MC noise)
        assert 20 < r["lib_nll"] < 60, r  # 8x8 digits, binarised: tens of nats
    assert "| vamp |" in (tmp_path / "quality.md").read_text()


def test_m2_benchmark_runs_on_digits():
    """bench_m2.py --quick: one JSON record per run and the table against the tutorial's figures."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_m2.py"), "--quick", "--threads", "1"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["labels"] for r in records] == [100]
    assert 0.0 <= records[0]["test_accuracy"] <= 1.0
    assert records[0]["labels_only_accuracy"] > 0.6  # 10 digits per class, the classifier alone: ~0.89
    assert "| 100 | 2 | 46 |" in done.stdout and "0.9319" in done.stdout


def test_evaluation_benchmark_runs_and_both_estimates_agree(tmp_path):
    """bench_evaluate.py --quick: timings of both implementations, and their IWAE estimates of the same model agree."""
    out = tmp_path / "evaluate.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_evaluate.py"), "--quick", "--json",
                           str(out)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["median_s"]["pyro"] > 0 and result["median_s"]["torch"] > 0
    assert result["ratio"] == result["median_s"]["pyro"] / result["median_s"]["torch"]
    ours, ref = (float(v) for v in re.search(r"pyro_vae (\S+), torch (\S+) nats", done.stdout).groups())
    assert abs(ours - ref) < 0.01 * abs(ref)  # two estimators of one log-likelihood, independent noise


def test_distributed_benchmark_runs_one_and_two_processes(tmp_path):
    """bench_distributed.py --quick: 1 process and 2 DDP processes each train an epoch and report throughput."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_distributed.py"), "--quick", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "distributed.json").read_text())["rows"]
    assert [(r["nproc"], r["ddp"]) for r in rows] == [(1, False), (2, True)]
    for r in rows:
        assert r["steps_per_s"] > 0 and abs(r["points_per_s"] - r["steps_per_s"] * 128) < 1e-6 * r["points_per_s"]
    assert "| 2 (DDP) |" in (tmp_path / "distributed.md").read_text()
