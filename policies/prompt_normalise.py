"""Text normalisation for prompt screening: one canonical form that obfuscations collapse into.

Prompt filters are evaded by writing the same word differently: look-alike letters from other
scripts ("sеx" with a Cyrillic "е"), fullwidth or styled letters, zero-width characters,
combining marks ("zalgo"), leetspeak ("n00d"), letters spaced out ("s e x", "n.u.d.e"). This module
folds all of those into one canonical form so that the lexicon only has to list a word once.

`normalise(text)` is the public entry point: idempotent, total (never raises on any `str`) and
pure. `prepare(text)` returns the same canonical text plus the per-token variants the filter
matches on (see `PreparedText`).

What this module must never do: look anything up in a lexicon, decide anything, or change the
meaning of ordinary text in ways the matcher cannot undo (benign numbers such as "1024x1024",
"4k" and "3 cats" stay as written; pure Cyrillic or Greek words stay in their script so the Russian
lexicon still matches them).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

__all__ = ["PreparedText", "normalise", "prepare", "skeleton", "tokenise"]

# --- character tables -------------------------------------------------------------------------

#: Zero-width and other invisible format characters are removed (category Cf covers most; the
#: explicit list documents the ones attackers use and adds a few that are not Cf).
_INVISIBLE = {
    0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180E, 0x200B, 0x200C, 0x200D,
    0x200E, 0x200F, 0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2060, 0x2061, 0x2062, 0x2063,
    0x2064, 0x2066, 0x2067, 0x2068, 0x2069, 0x206A, 0x206B, 0x206C, 0x206D, 0x206E, 0x206F,
    0x3164, 0xFEFF, 0xFFA0,
}

#: Combining marks that decorate Latin, Greek and Cyrillic letters (accents, "zalgo" stacks).
#: Script-specific marks (Japanese voicing marks, Indic vowel signs) carry meaning and are kept.
_COMBINING_RANGES = ((0x0300, 0x036F), (0x0483, 0x0489), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF),
                     (0x20D0, 0x20FF), (0xFE20, 0xFE2F))


def _build_delete_table() -> dict[int, None]:
    table: dict[int, None] = {code: None for code in _INVISIBLE}
    for low, high in _COMBINING_RANGES:
        table.update({code: None for code in range(low, high + 1)})
    # Variation selectors only select a glyph; tag characters smuggle invisible text.
    table.update({code: None for code in range(0xFE00, 0xFE10)})
    table.update({code: None for code in range(0xE0000, 0xE0080)})
    return table


_DELETE_TABLE = _build_delete_table()

#: Cyrillic and Greek letters (lower case, after case folding) that look like Latin letters.
#: Applied only to words that mix scripts, or as an extra variant for matching (see `prepare`).
_CONFUSABLE_TO_LATIN = str.maketrans({
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
    "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "ԁ": "d",
    "һ": "h", "ӏ": "l", "ԛ": "q", "ԝ": "w", "ү": "y", "ɡ": "g",
    # Greek
    "α": "a", "β": "b", "γ": "y", "δ": "d", "ε": "e", "ζ": "z", "η": "n", "ι": "i", "κ": "k",
    "μ": "u", "ν": "v", "ο": "o", "π": "n", "ρ": "p", "σ": "o", "ς": "s", "τ": "t", "υ": "u",
    "χ": "x", "ω": "w", "θ": "o", "λ": "l",
    # Latin-looking letters from other blocks that NFKC leaves alone
    "ı": "i", "ȷ": "j", "ſ": "s", "ɑ": "a", "ɩ": "i", "ɪ": "i", "ʀ": "r", "ʏ": "y", "ᴀ": "a",
    "ʙ": "b", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e", "ɢ": "g", "ʜ": "h", "ᴊ": "j", "ᴋ": "k", "ʟ": "l",
    "ᴍ": "m", "ɴ": "n", "ᴏ": "o", "ᴘ": "p", "ᴛ": "t", "ᴜ": "u", "ᴠ": "v", "ᴡ": "w", "ᴢ": "z",
    "ø": "o", "đ": "d", "ħ": "h", "ł": "l", "ŧ": "t", "ƀ": "b", "ɨ": "i", "ʉ": "u",
})

#: The reverse direction for Cyrillic words with a few Latin look-alikes mixed in.
_LATIN_TO_CYRILLIC = str.maketrans({
    "a": "а", "b": "в", "c": "с", "e": "е", "h": "н", "k": "к", "m": "м", "o": "о", "p": "р", "t": "т",
    "x": "х", "y": "у", "i": "і",
})

#: Characters in the confusable table that are not Latin (used to detect mixed-script words).
_FOREIGN_CONFUSABLES = frozenset(
    chr(code) for code in _CONFUSABLE_TO_LATIN if not ("a" <= chr(code) <= "z")
)

#: Leetspeak: digits and symbols standing for letters. "1", "|" and "!" all become "i";
#: `skeleton` then merges "l" into "i" so "b1ood" and "k1ll" both find their word.
_LEET = str.maketrans({
    "0": "o", "1": "i", "2": "z", "3": "e", "4": "a", "5": "s", "6": "g", "7": "t", "8": "b",
    "9": "g", "@": "a", "$": "s", "!": "i", "|": "i", "+": "t", "€": "e", "£": "l", "¢": "c",
    "(": "c", "<": "c", "ß": "ss",
})
_LEET_CHARS = frozenset("0123456789@$!|+€£¢(<")

#: A "word" made of a number with an optional short unit stays as written: 1024x1024, 4k, 3d,
#: 1080p, 35mm, 60fps, 16:9, 2nd, 12yo.
_NUMERIC_WORD = re.compile(
    r"\d+(?:[.,:x×/\-]\d+)*(?:k|p|px|fps|mm|cm|m|km|kg|g|d|x|s|th|st|nd|rd|yo|y|hz|gb|mb|am|pm|ml|l|in|ft|s|h|min|mp)?"
)

#: A chunk of text between whitespace that contains a leet character (only those can change):
#: anchored at the chunk's start so that a long chunk without one is scanned once, not once per
#: position.
_LEET_CHUNK = re.compile(r"(?<!\S)\S*?[" + re.escape("".join(sorted(_LEET_CHARS))) + r"]\S*")
_EDGE_PUNCTUATION = ".,;:?\"'()[]{}*«»“”‘’"

#: Runs of single characters separated by spaces or punctuation: "s e x", "n.u.d.e", "g-o-r-e".
_SPACED_RUN = re.compile(r"(?<!\w)\w(?:[\s.\-_*·•~/,:]{1,3}\w(?!\w)){2,}")
_RUN_SEPARATORS = re.compile(r"[\s.\-_*·•~/,:]+")

_WHITESPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")
_TOKEN = re.compile(r"\w+|[,.;:!?()\[\]|]")
_REPEATS = re.compile(r"(.)\1+")


def _is_latin_letter(char: str) -> bool:
    return "a" <= char <= "z"


def _fold_mixed_script_word(match: re.Match[str]) -> str:
    word = match.group(0)
    latin = sum(1 for char in word if _is_latin_letter(char))
    if not latin or not any(char in _FOREIGN_CONFUSABLES for char in word):
        return word
    cyrillic = sum(1 for char in word if "\u0400" <= char <= "\u04ff")
    if cyrillic > latin:  # a Russian word with a Latin look-alike slipped in ("кокaин")
        folded = word.translate(_LATIN_TO_CYRILLIC)
        if not any(_is_latin_letter(char) for char in folded):
            return folded
    return word.translate(_CONFUSABLE_TO_LATIN)


def _leet_candidate(core: str) -> bool:
    if not any(char in _LEET_CHARS for char in core):
        return False
    if not any(char.isalpha() for char in core):
        return False  # pure numbers and symbols ("1024", "3") are not words in disguise
    return _NUMERIC_WORD.fullmatch(core) is None


def _fold_leet_chunk(match: re.Match[str]) -> str:
    chunk = match.group(0)
    core = chunk.strip(_EDGE_PUNCTUATION)
    if not core or not _leet_candidate(core):
        return chunk
    start = chunk.index(core)
    return chunk[:start] + core.translate(_LEET) + chunk[start + len(core):]


def _join_run(match: re.Match[str]) -> str:
    run = match.group(0)
    if "  " in run:
        gaps = _RUN_SEPARATORS.findall(run)
        narrow = min(len(gap) for gap in gaps)
        if all(gap.isspace() for gap in gaps) and any(len(gap) > narrow for gap in gaps):
            # "m y  l a s t  n i g h t": letters one space apart, words further apart
            return _RUN_SEPARATORS.sub(lambda gap: " " if len(gap.group(0)) > narrow else "", run)
    return _RUN_SEPARATORS.sub("", run)


def _single_pass(text: str, *, leet: bool) -> str:
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
        text = text.casefold()
        text = unicodedata.normalize("NFD", text).translate(_DELETE_TABLE)
        text = unicodedata.normalize("NFC", text)
        text = unicodedata.normalize("NFKC", text)
    else:
        text = text.lower()
    if "_" in text:
        text = text.replace("_", " ")  # "s_e_x", "snake_case": underscores separate words
    text = _SPACED_RUN.sub(_join_run, text)
    if leet:
        text = _LEET_CHUNK.sub(_fold_leet_chunk, text)
    if not text.isascii():
        text = _WORD.sub(_fold_mixed_script_word, text)
    return _WHITESPACE.sub(" ", text).strip()


def _fixed_point(text: str, *, leet: bool) -> tuple[str, bool]:
    """Passes until nothing changes (at most 6) and whether that point was reached."""
    # Each step is idempotent on its own; a fold can still expose work for an earlier step
    # (a folded letter completing a spaced run), so run to a fixed point (in practice 1-2 passes).
    for _ in range(6):
        folded = _single_pass(text, leet=leet)
        if folded == text:
            return folded, True
        if not leet and text.isascii() and _SPACED_RUN.search(folded) is None:
            # From ASCII input a pass without leet folding leaves ASCII, lower case, no "_" and
            # single spaces: the next pass could only join a spaced run, and there is none.
            return folded, True
        text = folded
    return text, False


def _canonical(text: str, *, leet: bool) -> str:
    return _fixed_point(text, leet=leet)[0]


def _normalise_checked(text: str, *, leet: bool) -> tuple[str, bool]:
    """`normalise(text, leet=leet)` and whether it reached its fixed point."""
    try:
        return _fixed_point(text, leet=leet)
    except (ValueError, OverflowError):  # the same fallback as `normalise`
        cleaned = text.encode("utf-8", "replace").decode("utf-8")
        return _fixed_point(cleaned, leet=leet)


def normalise(text: str, *, leet: bool = True) -> str:
    """The canonical form of `text`: NFKC, case folded, invisible and combining characters
    removed, spaced-out letters joined, leetspeak and mixed-script look-alikes folded to Latin.

    Idempotent: `normalise(normalise(t)) == normalise(t)`. Never raises on a `str`.
    With `leet=False` digits and symbols are left as they are (the "plain" variant).
    """
    if not isinstance(text, str):
        raise TypeError(f"normalise() takes a str, not {type(text).__name__}")
    try:
        return _canonical(text, leet=leet)
    except (ValueError, OverflowError):  # lone surrogates and similar; keep what is printable
        cleaned = text.encode("utf-8", "replace").decode("utf-8")
        return _canonical(cleaned, leet=leet)


def skeleton(token: str) -> str:
    """A coarser key for obfuscated tokens: look-alikes and leet folded to Latin, "l" merged
    into "i" (1/l/i/| are interchangeable in leetspeak), runs of a repeated letter collapsed."""
    folded = token.translate(_LEET).translate(_CONFUSABLE_TO_LATIN).replace("l", "i")
    return _REPEATS.sub(r"\1", folded)


def tokenise(text: str) -> list[str]:
    """Words and clause punctuation of an already normalised text ("don't" becomes "do not")."""
    return _TOKEN.findall(text.replace("n't", " not").replace("n’t", " not"))


@dataclass(frozen=True, slots=True)
class PreparedText:
    """One field's text ready for matching.

    `canonical` is `normalise(text)`; `plain` the same without leet folding (digits kept, so
    ages like "12yo" and "1488" survive); `plain_tokens` and `alternates` are aligned token lists:
    `alternates[i]` is the skeleton of a token that looked obfuscated (leet, look-alikes from
    another script, stretched letters), or None when the token is ordinary. `runs` are the
    joined spaced-out letter runs, searched for embedded terms ("a n u d e" -> "anude").
    """

    canonical: str
    plain: str
    plain_tokens: list[str]
    alternates: list[str | None]
    runs: list[str]
    light: str = ""


_TRIPLE = re.compile(r"(.)\1\1")


def _alternate(original: str, folded: str) -> str | None:
    """The skeleton to look up besides `original`, or None when the token looks ordinary."""
    if original != folded:  # leetspeak
        return skeleton(folded)
    if not original.isascii():
        letters = [char for char in original if char.isalpha()]
        if letters and all(char in _FOREIGN_CONFUSABLES for char in letters):
            return skeleton(original)  # a whole word spelled with look-alikes ("ѕех")
    if _TRIPLE.search(original):  # stretched letters ("nuuuude")
        return skeleton(original)
    return None


def prepare(text: str) -> PreparedText:
    """Normalise `text` and compute the token variants the filter looks up."""
    if not isinstance(text, str):
        raise TypeError(f"prepare() takes a str, not {type(text).__name__}")
    plain, settled = _normalise_checked(text, leet=False)
    if settled and _LEET_CHUNK.search(plain) is None:
        # Nothing for leet folding to change, and the other steps already settled on `plain`:
        # the leet pass over it would return it unchanged.
        canonical = plain
    else:
        canonical = normalise(plain)
    plain_tokens = tokenise(plain)
    leet_tokens = plain_tokens if canonical is plain else tokenise(canonical)
    if leet_tokens is plain_tokens and plain.isascii() and _TRIPLE.search(plain) is None:
        alternates: list[str | None] = [None] * len(plain_tokens)  # ordinary ASCII words only
    elif len(leet_tokens) == len(plain_tokens):
        alternates = [_alternate(original, folded) for original, folded in zip(plain_tokens, leet_tokens)]
    else:  # leet folding changed the token boundaries ("k!ll"): look up the folded tokens too
        alternates = [None] * len(plain_tokens) + [None]
        alternates += [skeleton(token) for token in leet_tokens]
        plain_tokens = plain_tokens + ["|"] + leet_tokens
    light, runs = _find_runs(text)
    return PreparedText(canonical, plain, plain_tokens, alternates, runs, light)


def _find_runs(text: str) -> tuple[str, list[str]]:
    """The lightly cleaned text (folded, invisible characters removed, nothing joined) and the
    skeletons of its spaced-out runs."""
    light = text
    if not light.isascii():
        try:
            light = unicodedata.normalize("NFKC", light).casefold().translate(_DELETE_TABLE)
        except (ValueError, OverflowError):
            return "", []
    else:
        light = light.lower()
    light = light.replace("_", " ")
    runs = []
    for match in _SPACED_RUN.finditer(light):
        joined = _RUN_SEPARATORS.sub("", match.group(0))
        runs.append(skeleton(joined))
    return light, runs
