"""A rough language label for a text, for per-language reports only (nothing is trained
on it): the script for texts not in Latin letters, else the language whose common words
the text uses most. "other" when nothing decides."""
import re

SCRIPTS = [
    ("ja", re.compile(r"[\u3040-\u30ff]")),  # kana: before Han, which Japanese also uses
    ("zh", re.compile(r"[\u4e00-\u9fff]")),
    ("ko", re.compile(r"[\uac00-\ud7af]")),
    ("ar", re.compile(r"[\u0600-\u06ff]")),
    ("hi", re.compile(r"[\u0900-\u097f]")),
    ("ru", re.compile(r"[\u0400-\u04ff]")),
    ("he", re.compile(r"[\u0590-\u05ff]")),
    ("th", re.compile(r"[\u0e00-\u0e7f]")),
    ("bn", re.compile(r"[\u0980-\u09ff]")),
    ("ta", re.compile(r"[\u0b80-\u0bff]")),
]
WORDS = {
    "en": "the and you your to of is are what how please with this that for ignore all".split(),
    "fr": "le la les et est vous tu ton ta tes des une un pour que qui pas avec dans".split(),
    "de": "der die das und ist du dein deine nicht mit ich sie ein eine zu auf für".split(),
    "es": "el la los las y es tu tus que una para por con del lo está todas".split(),
    "it": "il la le è di che tu tuo tua una per non con del della sono questo".split(),
    "pt": "os as é que você seu sua um uma para não com do da ao são".split(),
    "nl": "de het een en is je jij jouw van dat niet met voor op zijn".split(),
    "pl": "nie się że jest na dla czy jak oraz jestem twoje twój wszystkie proszę".split(),
    "tr": "ve bir bu için ile ne sen senin tüm olarak değil gibi".split(),
    "ro": "și este în nu că pe cu pentru să din tău ta".split(),
}


def lang_of(text):
    # A script decides when it writes at least a third of the letters (a few Cyrillic
    # homoglyphs in an English attack do not make it Russian).
    letters = max(1, sum(c.isalpha() for c in text))
    for lang, pattern in SCRIPTS:
        if len(pattern.findall(text)) * 3 >= letters:
            return lang
    words = re.findall(r"[^\W\d_]+", text.lower())
    if not words:
        return "other"
    counts = sorted(((sum(w in common for w in words), lang) for lang, common in WORDS.items()), reverse=True)
    # Two common words at least, and more than the runner-up's.
    if counts[0][0] >= 2 and counts[0][0] > counts[1][0] and not (counts[0][1] != "en" and text.isascii()
                                                                    and dict((l, n) for n, l in counts)["en"] >= 2):
        return counts[0][1]
    # Otherwise plain ASCII is taken for English (what the registry corpora hold).
    return "en" if text.isascii() else "other"
