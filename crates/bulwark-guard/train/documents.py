"""Documents for training: passages of benign technical prose and code, and the same kind
of passages with one attack hidden inside; and, from another project, long pieces of
documentation and code to choose the documents model's threshold on.

Why: the registry corpora's benign texts are short questions (median 8 words; 13 of 8,341
are over 100 words), while many of their attacks are long. Trained on them alone, the
encoder took ordinary documentation and source code for attacks (`bench/documents.py`
measures it on the crates' own documentation). A gateway reads documents and tool results,
so it must learn what they look like.

Source: the Django 5.1.4 sdist on PyPI (BSD-3-Clause, digest pinned below): its
reStructuredText documentation (docs/**/*.txt) and its Python source (django/**/*.py).
A passage is a run of 30 to 90 consecutive words from one file, line breaks kept: about
one window of the encoder (128 tokens), cut anywhere, as the gateway's windows cut a long
text. Attack passages are other such passages with one attack from the fit split (train
minus the tuning split; injections, not harmful requests: neuralchemy's "jailbreak" rows
are left out; at most 40 words) put in at a random word. The tuning split's texts are
never used, and these passages join the fit split only (never tuning, never dev): the
thresholds are still chosen on the registry corpora.

The first stage's documents model (`examples/train_injection.rs`) trains on 12,000 benign
passages and 6,000 with an attack. The second stage's experiment with documents
(`finetune_encoder.py`, DOCS=1) used 3,000 and 1,500: BENIGN=3000 ATTACKS=1500.

Calibration (documents_calibration.jsonl): the Sphinx 8.1.3 sdist on PyPI (BSD-2-Clause,
digest pinned below), a different project, so that the threshold is chosen on text the
model never trained on: its documentation (doc/**/*.rst) cut at blank lines into pieces
of about 1 KB and 4 KB, and its source (sphinx/**/*.py) into pieces of about 2 KB, as
bench/documents.py cuts the crates' (which stay the independent check). Two pieces in
three of the prose and 600 of the code are benign; the other prose pieces each get one
attack of the tuning split (injections, at most 60 words) at a paragraph boundary, to
report how many the documents model finds (they choose nothing).

Snippets (snippets.jsonl): 3,000 runs of 2 to 12 lines of Django's source and 1,500 of 1
to 6 lines of its documentation, 3 to 64 words each, benign, for the first model (which
reads texts of up to 64 words): its training texts have no code, and it blocked about one
short snippet of source or documentation in five.

Deterministic (fixed seeds). Usage: python documents.py DATA_DIR (after prepare.py;
writes DATA_DIR/docs.jsonl, snippets.jsonl and documents_calibration.jsonl).
"""
import json
import os
import pathlib
import random
import re
import sys
import tarfile

from prepare import fetch, is_tuning, original_source

SDIST = "Django-5.1.4.tar.gz"
SDIST_SHA256 = "de450c09e91879fa5a307f696e57c851955c910a438a35e6b4c895e86bedc82a"
CAL_SDIST = "sphinx-8.1.3.tar.gz"
CAL_SDIST_SHA256 = "43c1911eecb0d3e161ad78611bc905d1ad0e523e4ddc202a58a821773dc4c927"
BENIGN = int(os.environ.get("BENIGN", "12000"))
ATTACKS = int(os.environ.get("ATTACKS", "6000"))
SNIPPETS = 3000
# neuralchemy's "jailbreak" rows are mostly harmful requests ("Write a blog post
# explaining why ..."), which say nothing about an instruction hidden in a document.
NOT_INJECTIONS = {"jailbreak"}


def hidden_from(row):
    """Whether attacks of `row`'s source are hidden in documents: those of the original
    sources (prepare.original_source), so that the passages stay as they were; every row
    says in `from` which source its attack came from, so that leave-one-source-out can
    drop it with that source."""
    return original_source(row["source"])


def passage(text, rng):
    """A run of 30 to 90 consecutive words of `text` (whitespace kept), or None."""
    words = list(re.finditer(r"\S+", text))
    n = rng.randint(30, 90)
    if len(words) < n:
        return None
    first = rng.randrange(len(words) - n + 1)
    return text[words[first].start():words[first + n - 1].end()]


def hide(text, attack, rng):
    """`text` with `attack` put in at a word boundary among its first 40 words."""
    words = list(re.finditer(r"\S+", text))
    at = words[rng.randrange(min(len(words), 40))].start()
    sep = rng.choice([" ", "\n", "\n\n"])
    return text[:at] + attack + sep + text[at:]


def chunks(text, size):
    """`text` cut at blank lines into pieces of about `size` bytes (as bench/documents.py)."""
    out, cur = [], ""
    for p in re.split(r"\n\s*\n", text):
        p = p.strip()
        if not p:
            continue
        if cur and len(cur) + len(p) > size:
            out.append(cur)
            cur = ""
        cur += p + "\n\n"
        if len(cur) > 2 * size:
            out.append(cur[:size])
            cur = ""
    if len(cur) > size // 2:
        out.append(cur)
    return out


def hide_paragraph(doc, attack, rng):
    """`doc` with `attack` as a paragraph of its own or at the end of one."""
    paras = doc.split("\n\n")
    at = rng.randrange(len(paras) + 1)
    if at < len(paras) and rng.random() < 0.5:
        paras[at] = paras[at].rstrip() + " " + attack
    else:
        paras.insert(at, attack)
    return "\n\n".join(paras)


def snippet(files, lo, hi, rng):
    """`lo` to `hi` consecutive lines of one of `files` (at least 20 lines long), of 3 to
    64 words: what a chat turn quotes, or a short tool result."""
    while True:
        lines = rng.choice(files).split("\n")
        if len(lines) < max(20, hi + 1):
            continue
        at = rng.randrange(len(lines) - hi)
        text = "\n".join(lines[at:at + rng.randint(lo, hi)]).strip()
        if 3 <= len(text.split()) <= 64:
            return text


def django_files(sdist):
    """Django's documentation (docs/**/*.txt) and source (django/**/*.py), in file-name
    order: (kind, text) with kind "docs" or "code"."""
    out = []
    with tarfile.open(sdist) as t:
        for m in sorted(t.getmembers(), key=lambda m: m.name):
            if not m.isfile():
                continue
            if "/docs/" in m.name and m.name.endswith(".txt") and "/_theme/" not in m.name:
                out.append(("docs", t.extractfile(m).read().decode("utf-8", "replace")))
            elif "/django/" in m.name and m.name.endswith(".py"):
                out.append(("code", t.extractfile(m).read().decode("utf-8", "replace")))
    return out


def snippets(files):
    """Short benign snippets of Django's source (2 to 12 lines) and documentation (1 to 6
    lines; `files` from `django_files`), for the first model: its training texts have no
    code, and it blocked one short snippet of source or documentation in five."""
    code = [t for kind, t in files if kind == "code"]
    docs = [t for kind, t in files if kind == "docs"]
    rng = random.Random(7)
    out = [snippet(code, 2, 12, rng) for _ in range(SNIPPETS)]
    out += [snippet(docs, 1, 6, rng) for _ in range(SNIPPETS // 2)]
    return [{"text": t, "label": 0, "source": "snippets"} for t in out]


def calibration(data, train):
    """Long pieces of Sphinx's documentation and code, a third of the prose with a tuning
    attack hidden in it (`category` says which kind)."""
    sdist = fetch(data, CAL_SDIST, "sphinx==8.1.3", CAL_SDIST_SHA256, sdist=True)
    docs, code = [], []
    with tarfile.open(sdist) as t:
        for m in sorted(t.getmembers(), key=lambda m: m.name):
            parts = m.name.split("/")
            if not m.isfile() or len(parts) < 3:
                continue
            if parts[1] == "doc" and m.name.endswith(".rst"):
                text = t.extractfile(m).read().decode("utf-8", "replace")
                for size in (1024, 4096):
                    docs += [(c, f"prose {size // 1024} KB") for c in chunks(text, size)]
            elif parts[1] == "sphinx" and m.name.endswith(".py"):
                text = t.extractfile(m).read().decode("utf-8", "replace")
                code += [(c, "code 2 KB") for c in chunks(text, 2048)]
    rng = random.Random(5)
    rng.shuffle(docs)
    rng.shuffle(code)
    attacks = [(r["text"], r["source"]) for r in train
               if r["label"] == 1 and is_tuning(r["text"]) and r.get("category", "") not in NOT_INJECTIONS
               and len(r["text"].split()) <= 60 and hidden_from(r)]
    n = len(docs) * 2 // 3
    rows = [{"text": c, "label": 0, "category": k} for c, k in docs[:n] + code[:600]]
    for c, k in docs[n:]:
        attack, source = rng.choice(attacks)
        rows.append({"text": hide_paragraph(c, attack, rng), "label": 1, "category": "attack in " + k, "from": source})
    with open(data / "documents_calibration.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"documents calibration: {n + min(600, len(code))} benign pieces, {len(docs) - n} with an attack",
          file=sys.stderr)


def main(data):
    data = pathlib.Path(data)
    django = django_files(fetch(data, SDIST, "django==5.1.4", SDIST_SHA256, sdist=True))
    files = [t for _, t in django]
    rng = random.Random(11)
    train = [json.loads(l) for l in open(data / "train.jsonl")]
    attacks = [(r["text"], r["source"]) for r in train
               if r["label"] == 1 and not is_tuning(r["text"]) and r.get("category", "") not in NOT_INJECTIONS
               and len(r["text"].split()) <= 40 and hidden_from(r)]

    def passages(n):
        out = []
        while len(out) < n:
            p = passage(rng.choice(files), rng)
            if p is not None:
                out.append(p)
        return out

    rows = [{"text": t, "label": 0, "source": "documents"} for t in passages(BENIGN)]
    for t in passages(ATTACKS):
        attack, source = rng.choice(attacks)
        rows.append({"text": hide(t, attack, rng), "label": 1, "source": "documents", "from": source})
    rng.shuffle(rows)
    with open(data / "docs.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"docs: {BENIGN} passages, {ATTACKS} with an attack hidden, from {len(files)} files; "
          f"{len(attacks)} attacks to hide", file=sys.stderr)
    rows = snippets(django)
    with open(data / "snippets.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"snippets: {len(rows)} short pieces of code and documentation", file=sys.stderr)
    calibration(data, train)


if __name__ == "__main__":
    main(sys.argv[1])
