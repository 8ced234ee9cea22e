"""Misspellings of lexicon words ("fertlizer", "suicde", "cocain", "Bolsonnaro"), read as the word.

A token is read as a lexicon word when it is one edit away from exactly one word of the shipped
lexicons (a letter dropped, added, changed, or two neighbours swapped), is at least `MIN_LENGTH`
letters long, and is not itself a word of any language: "setting" is one edit from "sexting", and
"heron" from "heroin", but both are ordinary words and stay what they are.

"Is a word" needs a word list, and a full one for 40 languages is large. What the filter needs is
much smaller: the real words that are one edit from a lexicon word. `KNOWN_NEAR_PATH` holds
exactly those, generated from the `wordfreq` package (every word at Zipf frequency `KNOWN_ZIPF` or
more in any of its languages) by `python3 -m policies.prompt_spelling --write`. The file records a
digest of the lexicon words it was made for, and a test fails when the lexicons changed and the
file was not written again.

What this module must never do: correct a word that some language uses, or reach a word that is
not in the shipped lexicons (a tenant's extra terms have no list of real words next to them).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = [
    "KNOWN_NEAR_PATH", "KNOWN_ZIPF", "MIN_LENGTH", "SpellingIndex", "known_near_digest", "known_near_words",
    "lexicon_words", "load_known_near", "one_edit", "vocabulary_digest",
]

KNOWN_NEAR_PATH = Path(__file__).parent / "data" / "prompt_known_near.txt"
#: Shorter tokens are too often abbreviations, names and other languages' words ("bom", "deth").
MIN_LENGTH = 5
#: A word at this Zipf frequency (once per 300 million words) or more in some language is a word,
#: never a misspelling. Higher, and rare words become misspellings ("kilted" 1.7, "bralette" 1.9:
#: "killed", French "branlette"); lower, and common misspellings ("herion" 1.47) count as words.
KNOWN_ZIPF = 1.5


def _deletions(word: str) -> Iterator[str]:
    for index in range(len(word)):
        yield word[:index] + word[index + 1:]


def one_edit(a: str, b: str) -> bool:
    """Whether `a` and `b` are exactly one edit apart: one letter changed, added or dropped, or
    two neighbouring letters swapped (Damerau)."""
    if a == b:
        return False
    la, lb = len(a), len(b)
    if la == lb:
        diffs = [index for index in range(la) if a[index] != b[index]]
        if len(diffs) == 1:
            return True
        return (len(diffs) == 2 and diffs[1] == diffs[0] + 1
                and a[diffs[0]] == b[diffs[1]] and a[diffs[1]] == b[diffs[0]])
    if abs(la - lb) != 1:
        return False
    short, long = (a, b) if la < lb else (b, a)
    index = 0
    while index < len(short) and short[index] == long[index]:
        index += 1
    return short[index:] == long[index + 1:]


class SpellingIndex:
    """The lexicon words a misspelled token may stand for, found through their one-letter
    deletions (a token and a word one edit apart share a deletion, or one is a deletion of the
    other)."""

    def __init__(self, vocabulary: Iterable[str], known_near: Iterable[str] = (), *,
                 known_near_fingerprint: str | None = None) -> None:
        self.vocabulary = frozenset(word for word in vocabulary if _eligible(word))
        self.known_near = frozenset(known_near)
        if known_near_fingerprint is None:
            known_near_fingerprint = hashlib.sha256("\n".join(sorted(self.known_near)).encode()).hexdigest()
        #: Changes with the lexicon words or the list of real words near them.
        self.fingerprint = hashlib.sha256(
            f"{vocabulary_digest(self.vocabulary)} {known_near_fingerprint}".encode()
        ).hexdigest()
        index: dict[str, list[str]] = {}
        for word in self.vocabulary:  # once per process and lexicon version (about 0.4 s)
            index.setdefault(word, []).append(word)
            for deleted in _deletions(word):
                index.setdefault(deleted, []).append(word)
        self._index = index

    def candidates(self, token: str) -> set[str]:
        """Every vocabulary word one edit from `token`."""
        found: set[str] = set()
        index = self._index
        for key in (token, *_deletions(token)):
            words = index.get(key)
            if words:
                found.update(word for word in words if one_edit(token, word))
        return found

    def correct(self, token: str) -> str | None:
        """The one lexicon word `token` misspells, or None (a word of some language, too short,
        a lexicon word itself, or one edit from two lexicon words by equally likely typos)."""
        if len(token) < MIN_LENGTH or token in self.vocabulary or token in self.known_near or not token.isalpha():
            return None
        found = self.candidates(token)
        if len(found) > 1:
            # Typing most often drops a letter, then swaps two, then hits a wrong key, and least often
            # adds one: "realistc" is "realistic", not "realist"; "powdr" is "powder", not "power".
            best = min(_edit_rank(token, word) for word in found)
            found = {word for word in found if _edit_rank(token, word) == best}
        if len(found) > 1:  # "napalmm": "napalm" or its plural "napalms"; the singular
            found = {word for word in found if not (word.endswith("s") and word[:-1] in found)
                     and not (word.endswith("es") and word[:-2] in found)}
        return found.pop() if len(found) == 1 else None


def _edit_rank(token: str, word: str) -> int:
    """0: `token` drops a letter of `word` or doubles one ("napalmm"); 1: swaps two; 2: changes
    one; 3: adds another."""
    if len(word) > len(token):
        return 0
    if len(word) < len(token):
        at = next((index for index, (a, b) in enumerate(zip(token, word)) if a != b), len(word))
        doubled = (at > 0 and token[at] == token[at - 1]) or token[at] == token[at + 1:at + 2]
        return 0 if doubled else 3
    return 2 if sum(a != b for a, b in zip(token, word)) == 1 else 1


def _eligible(word: str) -> bool:
    return len(word) >= MIN_LENGTH and word.isalpha()


def known_near_words(index: SpellingIndex, words: Iterable[str]) -> set[str]:
    """The `words` (real words of some language, normalised as prompts are) that `index` would
    otherwise read as a misspelling of a lexicon word."""
    return {
        word for word in words
        if len(word) >= MIN_LENGTH and word.isalpha() and word not in index.vocabulary and index.candidates(word)
    }


def wordfreq_words(zipf: float = KNOWN_ZIPF) -> set[str]:
    """Every word at Zipf frequency `zipf` or more in any language `wordfreq` knows, normalised as
    prompts are (case folded, accents dropped: `normalise(word, leet=False)`)."""
    import wordfreq  # a development dependency: only writing the file needs it

    from policies.prompt_normalise import normalise

    floor = 10 ** (zipf - 9)
    words: set[str] = set()
    for language in sorted(wordfreq.available_languages("best")):
        for word, frequency in wordfreq.get_frequency_dict(language, "best").items():
            if frequency >= floor and len(word) >= MIN_LENGTH:
                words.update((word.lower() if word.isascii() else normalise(word, leet=False)).split(" "))
    return words


def lexicon_words(entries: Iterable[str]) -> set[str]:
    """The words of lexicon entries (normalised, space-joined n-grams): what a misspelling may
    stand for, once `SpellingIndex` keeps those long enough."""
    return {word for entry in entries for word in entry.split(" ")}


def shipped_index() -> SpellingIndex:
    """The index over the shipped lexicons' words, without the list of real words near them (what
    writing that list starts from, so it works with the file missing or stale)."""
    from policies.prompt_lexicon import load_lexicon

    return SpellingIndex(lexicon_words(load_lexicon(misspellings=False).exact))


def vocabulary_digest(vocabulary: Iterable[str]) -> str:
    """What the list of real words was generated for: the lexicon words and the two settings."""
    digest = hashlib.sha256(f"{MIN_LENGTH} {KNOWN_ZIPF}\n".encode())
    digest.update("\n".join(sorted(vocabulary)).encode())
    return digest.hexdigest()


def render_known_near(words: Iterable[str], vocabulary: Iterable[str]) -> str:
    return (
        "# Real words one edit from a word of the shipped lexicons: never read as misspellings.\n"
        f"# Generated by `python3 -m policies.prompt_spelling --write` from wordfreq (Zipf >= {KNOWN_ZIPF}); "
        "do not edit.\n"
        f"{_DIGEST_PREFIX}{vocabulary_digest(vocabulary)}\n"
        + "".join(f"{word}\n" for word in sorted(words))
    )


_DIGEST_PREFIX = "# vocabulary sha256: "


def load_known_near(path: Path = KNOWN_NEAR_PATH) -> tuple[frozenset[str], str]:
    """The real words of `path` and a fingerprint of the file. A missing file raises: without it
    every rare real word near a lexicon word would be read as a misspelling."""
    data = path.read_bytes()
    words = frozenset(line for line in data.decode("utf-8").splitlines() if line and line[0] != "#")
    return words, hashlib.sha256(data).hexdigest()


def known_near_digest(path: Path = KNOWN_NEAR_PATH) -> str | None:
    """The vocabulary digest `path` was generated for."""
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.startswith(_DIGEST_PREFIX):
                return line[len(_DIGEST_PREFIX):].strip()
            if not line.startswith("#"):
                break
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help=f"write {KNOWN_NEAR_PATH.name}")
    args = parser.parse_args(argv)
    index = shipped_index()
    text = render_known_near(known_near_words(index, wordfreq_words()), index.vocabulary)
    if args.write:
        KNOWN_NEAR_PATH.write_text(text, encoding="utf-8")
        print(f"wrote {KNOWN_NEAR_PATH} ({text.count(chr(10)) - 3} words)")
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
