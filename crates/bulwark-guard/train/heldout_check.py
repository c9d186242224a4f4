"""How far the calibration's 1% false-positive rate on the tuning split holds on texts it
was not chosen on, from the tuning split alone (dev is not read).

Splits the tuning split in random halves (SEEDS times, both ways), chooses thresholds on
one half as `examples/calibrate_encoder.rs` does (the best recall with at most RATE of the
benign texts blocked: first stage >= t_first, or the blended encoder score >= t_enc, the
encoder read only from GATE up) and measures recall and false-positive rate on the other.

Input: the scores `calibrate_encoder` dumps with SCORES=PATH (its "tune" lines).
Usage: python heldout_check.py SCORES.jsonl [GATE=0.01] [WEIGHT=0]
"""
import json
import math
import random
import sys

SEEDS = 20
RATES = [0.01, 0.008, 0.007, 0.006, 0.005]


def logit(p):
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def main(path, gate, weight):
    rows = [r for r in map(json.loads, open(path)) if r["split"] == "tune"]
    for r in rows:
        r["blend"] = (weight * logit(r["first"]) + (1 - weight) * logit(r["encoder"])
                      if r["first"] >= gate else -math.inf)

    def fit(rows, rate):
        neg = [r for r in rows if not r["label"]]
        pos = [r for r in rows if r["label"]]
        allowed = int(rate * len(neg))
        best = None
        for t_first in sorted({r["first"] for r in rows if r["first"] >= 0.85} | {1.01}):
            fp_first = sum(r["first"] >= t_first for r in neg)
            if fp_first > allowed:
                continue
            rest = sorted((r["blend"] for r in neg if r["first"] < t_first), reverse=True)
            k = allowed - fp_first
            t_enc = math.nextafter(rest[k], math.inf) if k < len(rest) else -math.inf
            recall = sum(r["first"] >= t_first or r["blend"] >= t_enc for r in pos) / len(pos)
            if best is None or recall > best[0]:
                best = (recall, t_first, t_enc)
        return best

    def measure(rows, t_first, t_enc):
        blocked = [r for r in rows if r["first"] >= t_first or r["blend"] >= t_enc]
        pos = sum(r["label"] for r in rows)
        return (sum(r["label"] for r in blocked) / pos,
                sum(not r["label"] for r in blocked) / (len(rows) - pos))

    for rate in RATES:
        recalls, fprs = [], []
        for seed in range(SEEDS):
            order = list(range(len(rows)))
            random.Random(seed).shuffle(order)
            a = [rows[i] for i in order[:len(rows) // 2]]
            b = [rows[i] for i in order[len(rows) // 2:]]
            for chosen_on, measured_on in ((a, b), (b, a)):
                _, t_first, t_enc = fit(chosen_on, rate)
                r, f = measure(measured_on, t_first, t_enc)
                recalls.append(r)
                fprs.append(f)
        print(json.dumps({"gate": gate, "weight": weight, "rate chosen at": rate,
                          "held-out recall": round(sum(recalls) / len(recalls), 4),
                          "held-out fpr": round(sum(fprs) / len(fprs), 4)}))


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 0.01,
         float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
