"""Run the layer-input fuzzer (tests/test_faults.py) for a range of hypothesis seeds,
N cases per seed, all cases of a seed in one child process; stops at the first crash and
prints the case that caused it.

Usage: python benches/probes/fuzz_seeds.py FIRST_SEED LAST_SEED_EXCLUSIVE [CASES_PER_SEED]
"""
import json
import os
import sys
from collections import Counter

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402

import test_faults as T  # noqa: E402


def main(first, last, per_seed=2000):
    total = Counter()
    for s in range(first, last):
        cases = []

        @seed(s)
        @settings(max_examples=per_seed, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=T.fuzz_cases())
        def collect(case):
            cases.append(case)

        collect()
        r = T._run_cases(cases)
        lines = r.stdout.splitlines()
        total.update(lines)
        print(f"seed {s}: exit {r.returncode}, {len(lines)} of {len(cases)} cases done", flush=True)
        if r.returncode != 0:
            print(r.stderr[-2000:])
            print("crashing case:", json.dumps(cases[len(lines)]))
            return 1
    print("outcomes:", dict(total))
    return 0


if __name__ == "__main__":
    sys.exit(main(*[int(a) for a in sys.argv[1:]]))
