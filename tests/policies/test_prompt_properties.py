"""Property: an obfuscated form of any blocked lexicon term is still blocked.

Obfuscations combined at random per character: look-alike letters from Cyrillic and Greek,
leetspeak, zero-width characters, case changes, accents; and per term: letters spaced out.
Known limit, kept out of the strategy on purpose: a word whose every letter became a digit ("455")
reads as a number, and a leet word shaped like a measurement ("53x", like "35x") keeps its digits;
the first letter of each word therefore stays a letter (possibly a look-alike or upper case).
Another: after two one-letter words ("seins a l air"), a word with a symbol for a letter ("a l a!r")
reads as more spaced-out letters ("alair"), which is how spaced-out letters are joined; such a word
gets digits, not symbols, for its letters.
"""

from __future__ import annotations

from functools import lru_cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.decisions import Action
from policies.prompt_filter import PromptFilter

HOMOGLYPHS = {
    "a": "аα", "e": "еε", "o": "оο", "p": "рρ", "c": "с", "x": "хχ", "y": "у", "i": "іι", "s": "ѕ",
    "h": "һ", "k": "κ", "n": "η", "v": "ν", "t": "τ", "u": "υ", "j": "ј", "d": "ԁ",
}
LEET = {"a": "4@", "e": "3", "i": "1!|", "o": "0", "s": "5$", "t": "7+", "l": "1|", "b": "8", "g": "9"}
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"]
ACCENTS = ["\u0301", "\u0308", "\u0336", "\u0323"]


@lru_cache(maxsize=1)
def shared_filter() -> PromptFilter:
    return PromptFilter()


@lru_cache(maxsize=1)
def blocked_terms() -> list[str]:
    prompt_filter = shared_filter()
    terms = []
    for category in ("sexual", "sexual_minors", "violence", "self_harm", "hate", "weapons", "public_figures"):
        for term in prompt_filter.lexicon.blocked_terms(category):
            if term.replace(" ", "").isalpha() and term.isascii() and len(term) >= 3:
                if prompt_filter.check_text(term).action is Action.BLOCK:
                    terms.append(term)
    return terms


@st.composite
def obfuscated(draw: st.DrawFn) -> tuple[str, str]:
    term = draw(st.sampled_from(blocked_terms()))
    if draw(st.integers(0, 4)) == 0:  # spaced out: "n u d e", "n.u.d.e", "n-u-d-e"
        separator = draw(st.sampled_from([" ", ".", "-", "_", " . "]))
        return term, separator.join(char for char in term if char != " ")
    out = []
    words = term.split(" ")
    for index, word in enumerate(words):
        after_letters = index >= 2 and len(words[index - 1]) == len(words[index - 2]) == 1
        chars = []
        for position, char in enumerate(word):
            choice = draw(st.integers(0, 5))
            if choice == 1 and char in HOMOGLYPHS:
                char = draw(st.sampled_from(HOMOGLYPHS[char]))
            elif choice == 2 and char in LEET and position > 0:
                leet = [sub for sub in LEET[char] if sub.isdigit()] if after_letters else LEET[char]
                char = draw(st.sampled_from(leet)) if leet else char
            elif choice == 3:
                char = char.upper()
            elif choice == 4:
                char += draw(st.sampled_from(ACCENTS))
            if position < len(word) - 1 and draw(st.booleans()):
                char += draw(st.sampled_from(INVISIBLE))
            chars.append(char)
        out.append("".join(chars))
    return term, " ".join(out)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obfuscated(), st.sampled_from(["{}", "a photo of {}, 4k", "{}, cinematic lighting", "realistic {} scene"]))
def test_obfuscated_blocked_terms_stay_blocked(case: tuple[str, str], carrier: str) -> None:
    term, disguised = case
    verdict = shared_filter().check_text(carrier.format(disguised))
    assert verdict.action is Action.BLOCK, (term, disguised, verdict.to_dict())


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_filter_never_raises(text: str) -> None:
    verdict = shared_filter().check({"prompt": text, "negative_prompt": text[::-1]})
    assert verdict.action in (Action.ALLOW, Action.FLAG, Action.BLOCK)


def test_the_property_covers_many_terms() -> None:
    assert len(blocked_terms()) > 300
