#!/usr/bin/env python3
"""Draw the small, fixed samples of ../shared/corpora that tests/rules_regression.rs uses.

Re-run after the corpora change:  python3 tests/data/sample_corpora.py ../shared/corpora
Stratified and seeded: up to 300 attack payloads per category (all of the small categories),
every benign payload, 1,000 access-log lines and 300 benign query strings.
"""
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

src = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/corpora")
out = Path(__file__).resolve().parent
rng = random.Random(20261122)

by_cat = defaultdict(list)
benign = []
for line in (src / "payloads.dev.jsonl").open():
    row = json.loads(line)
    if row["label"] == "attack":
        by_cat[row["category"]].append(line)
    elif row["category"] != "benign_params":  # those are sampled from benign_params below
        benign.append(line)
with (out / "payloads.sample.jsonl").open("w") as f:
    for cat in sorted(by_cat):
        rows = by_cat[cat]
        f.writelines(rows if len(rows) <= 300 else rng.sample(rows, 300))
    f.writelines(benign)

lines = (src / "access_log.dev.log").read_text().splitlines(keepends=True)
(out / "access_log.sample.log").write_text("".join(rng.sample(lines, 1000)))
params = (src / "benign_params.dev.txt").read_text().splitlines(keepends=True)
(out / "benign_params.sample.txt").write_text("".join(rng.sample(params, 300)))
