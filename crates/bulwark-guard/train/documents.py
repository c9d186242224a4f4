"""Documents for the second stage's training: passages of benign technical prose and code,
and the same kind of passages with one attack hidden inside.

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

Deterministic (fixed seed). Usage: python documents.py DATA_DIR (after prepare.py; writes
DATA_DIR/docs.jsonl).
"""
import hashlib
import json
import pathlib
import random
import re
import subprocess
import sys
import tarfile

from prepare import is_tuning

SDIST = "Django-5.1.4.tar.gz"
SDIST_SHA256 = "de450c09e91879fa5a307f696e57c851955c910a438a35e6b4c895e86bedc82a"
BENIGN, ATTACKS = 3000, 1500
# neuralchemy's "jailbreak" rows are mostly harmful requests ("Write a blog post
# explaining why ..."), which say nothing about an instruction hidden in a document.
NOT_INJECTIONS = {"jailbreak"}


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


def main(data):
    data = pathlib.Path(data)
    sdist = data / SDIST
    if not sdist.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "django==5.1.4", "-d", str(data)], check=True)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        sys.exit(f"{sdist}: sha256 {digest}, expected {SDIST_SHA256}")
    files = []
    with tarfile.open(sdist) as t:
        for m in sorted(t.getmembers(), key=lambda m: m.name):
            if m.isfile() and (("/docs/" in m.name and m.name.endswith(".txt") and "/_theme/" not in m.name)
                               or ("/django/" in m.name and m.name.endswith(".py"))):
                files.append(t.extractfile(m).read().decode("utf-8", "replace"))
    rng = random.Random(11)
    train = [json.loads(l) for l in open(data / "train.jsonl")]
    attacks = [r["text"] for r in train
               if r["label"] == 1 and not is_tuning(r["text"]) and r.get("category", "") not in NOT_INJECTIONS
               and len(r["text"].split()) <= 40]

    def passages(n):
        out = []
        while len(out) < n:
            p = passage(rng.choice(files), rng)
            if p is not None:
                out.append(p)
        return out

    rows = [{"text": t, "label": 0, "source": "documents"} for t in passages(BENIGN)]
    rows += [{"text": hide(t, rng.choice(attacks), rng), "label": 1, "source": "documents"}
             for t in passages(ATTACKS)]
    rng.shuffle(rows)
    with open(data / "docs.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"docs: {BENIGN} passages, {ATTACKS} with an attack hidden, from {len(files)} files; "
          f"{len(attacks)} attacks to hide", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1])
