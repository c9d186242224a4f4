"""Compares trained adapters on the tuning split alone (dev is not read): the encoder's
recall and false-positive rate on tuning texts its threshold was not chosen on.

Splits the tuning split in random halves (SEEDS times, both ways), sets the encoder's
threshold on one half (the lowest letting at most RATE of its benign texts through) and
measures the other. Reads the trainer's own scores (`tune_scores.jsonl` in its OUT_DIR:
the first window of each text, or every window with WINDOWS=all) and the tuning split's
labels from DATA_DIR/train.jsonl (prepare.py's, with its corrections). The gateway's
calibration does the same with its own scores and every rule it weighs
(`examples/calibrate_encoder.rs`, `held_out`).

Usage: python heldout_check.py DATA_DIR RUN_DIR [RUN_DIR ...]
"""
import json
import math
import pathlib
import random
import sys

from prepare import is_tuning

SEEDS = 20
RATES = [0.01, 0.008, 0.007]


def held_out(rows, rate):
    recalls, fprs = [], []
    for seed in range(SEEDS):
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        halves = ([rows[i] for i in order[:len(rows) // 2]], [rows[i] for i in order[len(rows) // 2:]])
        for on, off in (halves, halves[::-1]):
            neg = sorted((s for s, l in on if not l), reverse=True)
            k = int(rate * len(neg))
            t = math.nextafter(neg[k], math.inf) if k < len(neg) else -math.inf
            pos = sum(l for _, l in off)
            recalls.append(sum(l and s >= t for s, l in off) / pos)
            fprs.append(sum(not l and s >= t for s, l in off) / (len(off) - pos))
    return sum(recalls) / len(recalls), sum(fprs) / len(fprs)


def main(data, runs):
    rows = [json.loads(l) for l in open(pathlib.Path(data) / "train.jsonl")]
    labels = [bool(r["label"]) for r in rows if is_tuning(r["text"])]
    for run in runs:
        scores = [float(l) for l in open(pathlib.Path(run) / "tune_scores.jsonl")]
        assert len(scores) == len(labels), f"{run}: not this tuning split"
        for rate in RATES:
            r, f = held_out(list(zip(scores, labels)), rate)
            print(json.dumps({"run": run, "rate chosen at": rate, "held-out recall": round(r, 4),
                              "held-out fpr": round(f, 4)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
