"""Normalisation: every obfuscation class folds to the plain word; harmless text survives."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.prompt_normalise import normalise, prepare, skeleton


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ＮＵＤＥ", "nude"),  # fullwidth
        ("𝐧𝐮𝐝𝐞", "nude"),  # mathematical bold
        ("nu\u200bd\u200ce", "nude"),  # zero-width characters
        ("n\u00adude", "nude"),  # soft hyphen
        ("n̷u̷d̷e̷", "nude"),  # combining overlay ("zalgo")
        ("núdé", "nude"),  # accents
        ("sеx", "sex"),  # Cyrillic е inside a Latin word
        ("ѕех", "ѕех"),  # a whole word of look-alikes stays as written (matched through its skeleton)
        ("s e x", "sex"),  # spaced letters
        ("k i l l  h i m", "kill him"),  # spaced letters, words further apart
        ("m y   l a s t   n i g h t", "my last night"),
        ("a  b  c", "abc"),  # evenly spaced: one run
        ("n.u.d.e", "nude"),
        ("g-o-r-e", "gore"),
        ("s_e_x", "sex"),
        ("p0rn", "porn"),  # leetspeak
        ("$3x", "sex"),
        ("NuDe", "nude"),  # case
        ("Straße", "strasse"),
        ("кокaин", "кокаин"),  # a Latin look-alike inside a Russian word goes the other way
    ],
)
def test_obfuscations_fold_to_the_plain_word(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


@pytest.mark.parametrize(
    "text",
    ["1024x1024", "4k", "3 cats", "1080p", "35mm", "16:9", "60fps", "2nd place", "12yo", "3d render"],
)
def test_benign_numbers_are_left_alone(text: str) -> None:
    assert normalise(text) == text.lower()


def test_russian_and_japanese_stay_in_their_script() -> None:
    assert normalise("Голая Правда") == "голая правда"
    assert normalise("カロリー") == "カロリー"
    assert normalise("ドラッグ") == "ドラッグ"  # voicing marks are kept (not トラック, truck)


def test_skeleton_merges_leet_confusions() -> None:
    assert skeleton("b1ood") == skeleton("blood")
    assert skeleton("k1ll") == skeleton("kill")
    assert skeleton("nuuuude") == skeleton("nude")


def test_prepare_reports_obfuscated_tokens_only() -> None:
    prepared = prepare("a n00d photo")
    assert prepared.plain_tokens == ["a", "n00d", "photo"]
    assert prepared.alternates[0] is None and prepared.alternates[2] is None
    assert prepared.alternates[1] == skeleton("nood")


def test_normalise_rejects_non_strings() -> None:
    with pytest.raises(TypeError):
        normalise(b"bytes")  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_normalise_is_idempotent_and_total(text: str) -> None:
    once = normalise(text)
    assert isinstance(once, str)
    assert normalise(once) == once


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8")))
def test_prepare_never_raises(text: str) -> None:
    prepared = prepare(text)
    assert len(prepared.plain_tokens) == len(prepared.alternates)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("abcdeiklnostx 0134579@$!|._-\u200bаеорсхуіѕ"))))
def test_idempotent_on_obfuscation_alphabet(text: str) -> None:
    once = normalise(text)
    assert normalise(once) == once


# The fast paths (ASCII input, nothing to fold as leet) must give exactly what the plain definitions
# give: `plain` is `normalise(text, leet=False)`, `canonical` is `normalise(plain)`, and a token's
# alternate is `_alternate(token, leet-folded token)`.
_FAST_PATH_TEXT = st.lists(
    st.sampled_from(list("abeiklnostx AE 0134579@$!|._-,:*/~()'\t\n") + ["n't", "    ", "\u200b", "é", "ℌ"]),
    max_size=40,
).map("".join)


def _reference_prepare(text: str) -> tuple[str, str, list[str], list[str | None]]:
    from policies.prompt_normalise import _alternate, tokenise

    plain = normalise(text, leet=False)
    canonical = normalise(plain)
    plain_tokens, leet_tokens = tokenise(plain), tokenise(canonical)
    if len(plain_tokens) == len(leet_tokens):
        return canonical, plain, plain_tokens, [_alternate(a, b) for a, b in zip(plain_tokens, leet_tokens)]
    return (canonical, plain, plain_tokens + ["|"] + leet_tokens,
            [None] * (len(plain_tokens) + 1) + [skeleton(token) for token in leet_tokens])


@settings(max_examples=500, deadline=None)
@given(st.one_of(_FAST_PATH_TEXT, st.text()))
def test_prepare_fast_paths_match_the_definitions(text: str) -> None:
    prepared = prepare(text)
    assert (prepared.canonical, prepared.plain, prepared.plain_tokens, prepared.alternates) == _reference_prepare(text)


@settings(max_examples=500, deadline=None)
@given(_FAST_PATH_TEXT)
def test_plain_normalisation_reaches_a_fixed_point(text: str) -> None:
    from policies.prompt_normalise import _single_pass

    plain = normalise(text, leet=False)
    assert _single_pass(plain, leet=False) == plain
    assert normalise(plain, leet=False) == plain
