"""The benchmark commands run end to end on tiny sizes, so they never rot (figures: benchmarks/RESULTS.md)."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

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


def test_training_benchmark_times_each_posterior_against_the_default(tmp_path):
    """bench_train.py --posteriors: a row per family, the default and the hand-written reference, each ratio the
    family's time over the default's measured in the same run; the families' guides have more parameters."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_train.py"), "--quick", "--cases", "tiny",
                           "--posteriors", "normal,iaf,fullrank", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "train_posteriors.json").read_text())["rows"]
    assert [r["posterior"] for r in rows] == ["normal", "iaf", "fullrank", "reference"]
    normal = rows[0]
    assert normal["step_ratio_to_normal"] == 1.0 and normal["epoch_ratio_to_normal"] == 1.0
    for r in rows:
        assert r["step_ms"] > 0 and r["epoch_s"] > 0, r
        assert r["step_ratio_to_normal"] == r["step_ms"] / normal["step_ms"], r
    # tiny net, z = 2: fullrank adds one head of d(d-1)/2 = 1 output, IAF its context head and its flows
    hidden = 16
    assert rows[2]["guide_params"] == normal["guide_params"] + (hidden + 1) * 1
    assert rows[1]["guide_params"] > normal["guide_params"] + (hidden + 1) * 32
    assert rows[3]["guide_params"] == normal["guide_params"]  # the reference's encoder is the default's
    assert "| tiny | iaf |" in (tmp_path / "train_posteriors.md").read_text()


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


def test_quality_benchmark_takes_a_posterior_and_a_diagonal_twin_reference(tmp_path):
    """bench_quality.py --posterior: the flow model's two estimators agree, and the diagonal reference starts
    from the flow model's weights wherever they share one (decoder, hidden layers, loc and scale rows)."""
    import argparse
    import importlib.util

    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_quality.py"), "--quick", "--posterior",
                           "planar", "--posterior-options", '{"n_flows": 2}', "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = json.loads((tmp_path / "quality.json").read_text())["rows"]
    assert (row["model"], row["posterior"], row["posterior_options"]) == ("vae", "planar", {"n_flows": 2})
    assert abs(row["lib_nll"] - row["lib_nll_by_reference_estimator"]) < 0.5, row
    assert abs(row["ref_minus_lib_nll"] - (row["ref_nll"] - row["lib_nll"])) < 1e-6, row
    assert 20 < row["lib_nll"] < 60 and 20 < row["ref_nll"] < 60, row

    spec = importlib.util.spec_from_file_location("bench_quality", REPO / "benchmarks" / "bench_quality.py")
    bq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bq)
    args = argparse.Namespace(seed=3, hidden=16, latent=4, components=10, activation="tanh", posterior="iaf")
    lib = bq.build("vae", (64,), 16, 4, 10, "tanh", "iaf")
    twin = bq.diagonal_twin(lib, "vae", (64,), args)
    assert twin.posterior.name == "normal"
    for name, value in twin.decoder.state_dict().items():
        assert torch.equal(value, lib.decoder.state_dict()[name]), name
    first, last = lib.encoder.net.layers[0], lib.encoder.net.layers[-1]
    assert torch.equal(twin.encoder.net.layers[0].weight, first.weight)
    assert last.out_features == 2 * 4 + lib.posterior.context  # loc, scale, then the flows' context
    assert torch.equal(twin.encoder.net.layers[-1].weight, last.weight[:8])
    assert torch.equal(twin.encoder.net.layers[-1].bias, last.bias[:8])


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


@pytest.mark.slow  # four fresh processes training and evaluating: ~30 s quiet, minutes under load
def test_scale_benchmark_sources_train_like_the_dense_tensor(tmp_path):
    """bench_scale.py --quick: each source (sparse .npz, .h5ad in memory and backed) trains the NB VAE in its own
    process to the held-out log-likelihood of the dense tensor on the same data and seed, with its peak RSS."""
    cases = ["sparse", "h5ad-mem", "h5ad-backed", "dense"]
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_scale.py"), "--quick", "--cases",
                           ",".join(cases), "--out", str(tmp_path)], capture_output=True, text=True, timeout=600,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "scale_quick.json").read_text())
    rows = {r["case"]: r for r in report["rows"]}
    assert list(rows) == cases
    for r in rows.values():
        for key in ("peak_rss_mib", "train_peak_rss_mib", "points_per_s", "train_s", "heldout_ll_per_cell"):
            assert r[key] > 0 if key != "heldout_ll_per_cell" else r[key] < 0, (r["case"], key)
        assert r["peak_rss_mib"] >= r["train_peak_rss_mib"] * 0.99, r
    dense = rows["dense"]["heldout_ll_per_cell"]
    # no chunks in memory: the same permutation, rows and steps as the tensor, so the same weights
    for case in ("sparse", "h5ad-mem"):
        assert abs(rows[case]["heldout_ll_per_cell"] - dense) < 1e-3, (case, rows[case], dense)
    assert abs(rows["h5ad-backed"]["heldout_ll_per_cell"] - dense) < 0.02 * abs(dense), rows["h5ad-backed"]
    data = report["data"]["2000"]
    assert 0.03 < data["density"] < 0.08 and data["csr_bytes"] > 0
    assert {t["target"].split(" at ")[0] for t in report["targets"]} >= {"sparse throughput",
                                                                         "sparse held-out log-lik per cell"}


def test_memory_benchmark_measures_each_case_in_its_own_process(tmp_path):
    """bench_memory.py --quick: the peak RSS of the command, the plain Pyro loop and fit, each a fresh process."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_memory.py"), "--quick", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["case"]: r for r in json.loads((tmp_path / "memory.json").read_text())["rows"]}
    assert set(rows) == {"command", "plain", "fit"}
    for row in rows.values():
        assert 100 < row["peak_rss_mib"] < 100_000  # torch alone is a few hundred MiB
        assert row["ratio_to_plain"] == row["peak_rss_mib"] / rows["plain"]["peak_rss_mib"]
    assert "| command |" in (tmp_path / "memory.md").read_text()
