"""The analysis in the benchmark scripts of ``benches/``: ``peers.py``'s side-by-side ratios (its
timed children need the peers' frameworks; the analysis does not)."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location("peers_bench", os.path.join(ROOT, "benches", "peers.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ratios_pair_each_round_with_its_fastest_peer(peers):
    results = {
        ("lenet", "cython"): [{"train_ips": 200.0}, {"train_ips": 90.0}, {"error": "boom"}],
        ("lenet", "torch"): [{"train_ips": 100.0}, {"train_ips": 30.0}, {"train_ips": 100.0}],
        ("lenet", "keras"): [{"train_ips": 50.0}, {"train_ips": 45.0}, {"train_ips": 50.0}],
        ("lenet", "jax"): [{"train_ips": 80.0}, {"error": "no jax"}, {"train_ips": 10.0}],
    }
    # round 1: 200 / 100, round 2: 90 / 30; round 3 left out (fastcnn failed)
    assert peers.round_ratios(results, "lenet", "cython", ["torch"], "train_ips") == [2.0, 3.0]
    # the faster of Keras and JAX in each round: 80 in round 1, 45 in round 2 (JAX failed)
    assert peers.round_ratios(results, "lenet", "cython", ["keras", "jax"], "train_ips") == [2.5, 2.0]
    assert peers.round_ratios(results, "lenet", "cython", ["torch"], "infer_ips") == []


def test_ratio_table_prints_the_median_of_the_rounds(peers, capsys):
    results = {("bn", "numba"): [{"train_ips": 30.0, "infer_ips": 8.0}, {"train_ips": 40.0, "infer_ips": 9.0},
                                 {"train_ips": 10.0, "infer_ips": 9.0}],
               ("bn", "torch"): [{"train_ips": 10.0, "infer_ips": 4.0}, {"train_ips": 10.0, "infer_ips": 3.0},
                                 {"train_ips": 10.0, "infer_ips": 3.0}]}

    class Args:
        frameworks, models = ["torch", "numba"], ["bn"]

    peers.ratio_table(results, Args)
    out = capsys.readouterr().out
    assert "| bn | 3.00 (1.00-4.00) |" in out  # training: 3, 4, 1
    assert "| bn | 3.00 (2.00-3.00) |" in out  # inference: 2, 3, 3
