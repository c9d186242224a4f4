"""The guard's quality and speed on the dev split, side by side with prompt-guardrail
(PyPI, an offline TF-IDF + logistic-regression injection classifier), same texts, same
run. Prints JSON lines. Usage: python guard.py DEV.jsonl BULWARK_BIN"""
import json
import subprocess
import sys
import time


def metrics(name, preds, labels, seconds, total_bytes):
    tp = sum(1 for p, y in zip(preds, labels) if p and y)
    fp = sum(1 for p, y in zip(preds, labels) if p and not y)
    tn = sum(1 for p, y in zip(preds, labels) if not p and not y)
    fn = sum(1 for p, y in zip(preds, labels) if not p and y)
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-9)
    return {"detector": name, "n": len(labels), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "precision": round(precision, 4), "recall": round(recall, 4), "fpr": round(fp / max(fp + tn, 1), 4),
            "f1": round(f1, 4), "seconds": round(seconds, 3), "texts_per_s": round(len(labels) / seconds, 1),
            "mb_per_s": round(total_bytes / seconds / 1e6, 3)}


def main(dev_path, bulwark):
    rows = [json.loads(l) for l in open(dev_path) if l.strip()]
    texts = [r["text"] for r in rows]
    labels = [r["label"] == 1 for r in rows]
    size = sum(len(t.encode()) for t in texts)
    payload = "".join(json.dumps({"text": t}) + "\n" for t in texts)

    # Bulwark: one process scans every text (its start-up is included: ~10 ms, and
    # ~0.2 s more to load the encoder), with both stages and with the first alone.
    for name, extra in [("bulwark, first stage (default)", []), ("bulwark, both stages (--encoder)", ["--encoder"])]:
        t0 = time.perf_counter()
        out = subprocess.run([bulwark, "scan", "--jsonl", *extra], input=payload, capture_output=True, text=True,
                             check=True).stdout
        secs = time.perf_counter() - t0
        reports = [json.loads(l) for l in out.splitlines()]
        print(json.dumps(metrics(name, [r["verdict"] == "block" for r in reports], labels, secs, size)))

    from guardify import detect
    detect("warm up")
    t0 = time.perf_counter()
    preds = [detect(t)["label"] == "injection" for t in texts]
    secs = time.perf_counter() - t0
    print(json.dumps(metrics("prompt-guardrail 1.0.1", preds, labels, secs, size)))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
