"""Rebuild the shipped datasets: `python -m train.data [--out DIR] [--seed N]`."""

import argparse

from train.data import DATA_DIR, SEED, write_all

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument(
    "--out", default=str(DATA_DIR), help="folder for the JSONL files (default: beside the code)"
)
parser.add_argument("--seed", type=int, default=SEED)
args = parser.parse_args()
for path in write_all(args.out, args.seed):
    print(f"wrote {path}")
