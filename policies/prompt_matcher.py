"""Finding lexicon terms in one prepared text field: token n-grams, obfuscation skeletons, word
prefixes, spaced-out runs, substrings in Japanese, and ages written as numbers.

The output is a list of `Hit`s annotated with what surrounds them (a negation cue before them,
a benign phrase or a tenant allow term around them, a noun after them that makes them a shade or
a product: "nude matte lipstick"). Nothing here decides; `PromptFilter`
turns hits into a verdict.

What this module must never do: apply a policy, or match a term inside a longer word of an
alphabetic script (word boundaries of the normalised text only; "cocktail" never yields "cock").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from policies.prompt_lexicon import MODIFIER_GAP, Lexicon, Tag
from policies.prompt_normalise import PreparedText, skeleton
from policies.prompt_spelling import MIN_LENGTH

__all__ = ["Hit", "scan_field"]

_MINOR_AGE = re.compile(
    r"(?<![\w.])(\d(?:[ .]?\d)?)\s*(?:-\s*)?"
    r"(?:years?|yrs?|yo|y/o|y\.o\.?|anos?|ans?|jahre?n?|jahrige[nrs]?|jahrig|лет|года?|歳|才)(?!\w)"
)
_ADULT_AGE_LIMIT = 18
_JA_MINOR_GRADE = re.compile(r"(?:小学|中学)\d?年生")
_AGE_TAG_LANGUAGE = "age"


@dataclass(slots=True)
class Hit:
    """One lexicon entry found in one field. `start`/`end` is the token span [start, end) over
    `PreparedText.plain_tokens` (-1 for substring and age hits); `chars` is the character span of a
    substring (Japanese) hit in the space-free text."""

    tags: tuple[Tag, ...]
    start: int
    end: int
    matched: str
    field: str
    negative: bool
    via: str  # exact | skeleton | typo | prefix | run | cjk | age | echo
    negated: bool = False
    benign: bool = False
    allowed: bool = False
    chars: tuple[int, int] | None = None

    def has(self, name: str, tier: str | None = None) -> bool:
        for tag in self.tags:  # a plain loop: called for every hit, several times
            if tag.name == name and tag.tier == tier:
                return True
        return False


def _is_word(token: str) -> bool:
    return token[0].isalnum() or token[0] == "_"


def _token_hits(lexicon: Lexicon, prepared: PreparedText, field: str, negative: bool) -> list[Hit]:
    tokens = prepared.plain_tokens
    alternates = prepared.alternates
    count = len(tokens)
    exact = lexicon.exact
    skeletons = lexicon.skeletons
    prefix_heads = lexicon.prefix_heads
    ngram_heads = lexicon.ngram_heads
    ngram_prefixes = lexicon.ngram_prefixes
    max_ngram = lexicon.max_ngram
    #: Tokens read as misspelled lexicon words ("fertlizer"): looked up through the word's skeleton.
    spelling = lexicon.spelling
    typos: set[int] = set()
    if spelling is not None:
        for index, token in enumerate(tokens):
            if alternates[index] is None and len(token) >= MIN_LENGTH and token not in exact:
                word = spelling.correct(token)
                if word is not None:
                    if not typos:
                        alternates = list(alternates)
                    alternates[index] = skeleton(word)
                    typos.add(index)
    #: No token looked obfuscated (the usual case): no skeleton lookups, and an n-gram that is not
    #: the start of a longer lexicon entry cannot grow into one.
    plain_only = alternates.count(None) == len(alternates)
    hits: list[Hit] = []
    for index, token in enumerate(tokens):
        if not (token[0].isalnum() or token[0] == "_"):
            continue
        alternate = alternates[index]
        tags = exact.get(token)
        if tags:
            hits.append(Hit(tags, index, index + 1, token, field, negative, "exact"))
        if alternate is not None and len(token) > 1:  # a lone letter is no obfuscated word ("х" is not "xxx")
            tags = skeletons.get(alternate)
            if tags:
                hits.append(Hit(tags, index, index + 1, tags[0].term, field, negative,
                                "typo" if index in typos else "skeleton"))
        if token[:3] in prefix_heads:
            _prefix_hit(lexicon, hits, token, index, field, negative)
        if alternate is not None and alternate[:3] in prefix_heads:
            _prefix_hit(lexicon, hits, alternate, index, field, negative)
        if plain_only:
            if token not in ngram_heads:
                continue
            key = token
            for stop in range(index + 2, min(count, index + max_ngram) + 1):
                following = tokens[stop - 1]
                if not (following[0].isalnum() or following[0] == "_" or following == ","):
                    break
                key = f"{key} {following}"
                tags = exact.get(key)
                if tags:
                    hits.append(Hit(tags, index, stop, key, field, negative, "exact"))
                if key not in ngram_prefixes:
                    break
        elif token in ngram_heads or (alternate is not None and alternate in ngram_heads):
            for length in range(2, max_ngram + 1):
                stop = index + length
                if stop > count or not (_is_word(tokens[stop - 1]) or tokens[stop - 1] == ","):
                    break
                key = " ".join(tokens[index:stop])
                tags = exact.get(key)
                if tags:
                    hits.append(Hit(tags, index, stop, key, field, negative, "exact"))
                if any(alternates[position] is not None for position in range(index, stop)):
                    skeleton_key = " ".join(
                        alternates[position] or skeleton(tokens[position]) for position in range(index, stop)
                    )
                    tags = skeletons.get(skeleton_key)
                    if tags:
                        hits.append(Hit(tags, index, stop, tags[0].term, field, negative,
                                        "typo" if typos.intersection(range(index, stop)) else "skeleton"))
    return hits


def _prefix_hit(lexicon: Lexicon, hits: list[Hit], candidate: str, index: int, field: str, negative: bool) -> None:
    """The shortest lexicon prefix ("porn*") that `candidate` starts with, if any."""
    for length in lexicon.prefix_lengths:
        if length > len(candidate):
            break
        tags = lexicon.prefixes.get(candidate[:length])
        if tags:
            hits.append(Hit(tags, index, index + 1, candidate, field, negative, "prefix"))
            return


def _run_hits(lexicon: Lexicon, prepared: PreparedText, field: str, negative: bool) -> list[Hit]:
    hits: list[Hit] = []
    for run in prepared.runs:
        for start in range(len(run)):
            for length in lexicon.run_lengths:
                if start + length > len(run):
                    break
                tags = lexicon.run_terms.get(run[start:start + length])
                if tags:
                    hits.append(Hit(tags, -1, -1, tags[0].term, field, negative, "run"))
    return hits


#: A word or name in triple parentheses. Antisemites mark Jewish names so ("echoes"); Stable
#: Diffusion users mark emphasis so ("(((masterpiece)))"), which is why it is only a weak term.
_ECHO = re.compile(r"\(\s*\(\s*\(\s*[^()\s][^()]{0,60}\)\s*\)\s*\)")
_ECHO_TAG = Tag("hate", "weak", "en", "triple parentheses")


def _special_hits(lexicon: Lexicon, prepared: PreparedText, field: str, negative: bool) -> list[Hit]:
    hits: list[Hit] = []
    text = prepared.plain
    for source in (text, prepared.light) if prepared.light != text else (text,):
        for match in _MINOR_AGE.finditer(source):
            if int(match.group(1).replace(" ", "").replace(".", "")) < _ADULT_AGE_LIMIT:
                tag = Tag("minor", None, _AGE_TAG_LANGUAGE, "age under 18")
                hits.append(Hit((tag,), -1, -1, match.group(0), field, negative, "age"))
                break
    match = _ECHO.search(text)
    if match is not None:  # "(((name)))", the antisemitic echo; also Stable Diffusion's emphasis: weak
        hits.append(Hit((_ECHO_TAG,), -1, -1, match.group(0), field, negative, "echo"))
    if lexicon.cjk_pattern is not None and not text.isascii():
        compact = text.replace(" ", "")
        for match in lexicon.cjk_pattern.finditer(compact):
            term = match.group(0)
            hits.append(Hit(lexicon.cjk_terms[term], -1, -1, term, field, negative, "cjk",
                            chars=(match.start(), match.end())))
        for match in _JA_MINOR_GRADE.finditer(compact):
            tag = Tag("minor", None, "ja", match.group(0))
            hits.append(Hit((tag,), -1, -1, match.group(0), field, negative, "age"))
    return hits


def _covers(outer: Hit, inner: Hit) -> bool:
    if outer is inner:
        return False
    if inner.start >= 0 and outer.start >= 0:
        return outer.start <= inner.start and inner.end <= outer.end
    if inner.chars is not None and outer.chars is not None:
        return outer.chars[0] <= inner.chars[0] and inner.chars[1] <= outer.chars[1]
    return False


def _after_number(tokens: list[str], hit: Hit, units: frozenset[str]) -> bool:
    """A one-word hit that is a unit of measure right after a number ("a 5 kms run")."""
    return (hit.start > 0 and hit.end == hit.start + 1 and tokens[hit.start] in units
            and tokens[hit.start - 1][0].isdigit())


def _modifies_benign_noun(tokens: list[str], hit: Hit, lexicon: Lexicon) -> bool:
    """A hit that is a benign modifier right before one of its nouns, or right after one of its
    `nouns_before` ("rouge a levres nude"), with at most `MODIFIER_GAP` filler words between them
    ("nude matte lipstick"; not "nude woman in heels", not "nude, heels")."""
    term = " ".join(tokens[hit.start:hit.end])
    following, preceding = lexicon.modifiers.get(term), lexicon.modifiers_after.get(term)
    return ((following is not None and _noun_past_fillers(tokens, hit.end, 1, following, lexicon.modifier_fillers))
            or (preceding is not None
                and _noun_past_fillers(tokens, hit.start - 1, -1, preceding, lexicon.modifier_fillers)))


def _noun_past_fillers(tokens: list[str], index: int, step: int, nouns: frozenset[str],
                       fillers: frozenset[str]) -> bool:
    """Whether, walking from `index` by `step` (1: forward, -1: backward), at most `MODIFIER_GAP`
    filler words lead to one of `nouns`."""
    start = index
    while 0 <= index < len(tokens) and abs(index - start) < MODIFIER_GAP and tokens[index] in fillers:
        index += step
    return 0 <= index < len(tokens) and tokens[index] in nouns


def _annotate(hits: list[Hit], tokens: list[str], window: int, lexicon: Lexicon) -> None:
    negations = [hit for hit in hits if hit.has("negation") and hit.start >= 0]
    shields = [hit for hit in hits if hit.has("benign") or hit.has("allow")]
    units = lexicon.units
    for hit in hits:
        hit.benign = (hit.has("benign") or (bool(units) and _after_number(tokens, hit, units))
                      or ((bool(lexicon.modifiers) or bool(lexicon.modifiers_after)) and hit.start >= 0
                          and _modifies_benign_noun(tokens, hit, lexicon)))
        hit.allowed = hit.has("allow")
        for shield in shields:
            if _covers(shield, hit):
                if shield.has("benign"):
                    hit.benign = True
                if shield.has("allow"):
                    hit.allowed = True
        if hit.start > 0 and window:
            for cue in negations:
                if cue.end <= hit.start and hit.start - cue.end < window and cue is not hit:
                    between = tokens[cue.end:hit.start]
                    if all(_is_word(token) for token in between):
                        hit.negated = True
                        break


def scan_field(lexicon: Lexicon, prepared: PreparedText, field: str, *, negative: bool,
               negation_window: int) -> list[Hit]:
    """Every lexicon hit in one field, annotated with negation, benign phrases, allow terms."""
    hits = _token_hits(lexicon, prepared, field, negative)
    if prepared.runs:
        hits += _run_hits(lexicon, prepared, field, negative)
    hits += _special_hits(lexicon, prepared, field, negative)
    for signs in lexicon.language_signs if hits else ():  # Portuguese "no" is "in the", French "son" "his, her"
        if any(hit.matched in signs.not_terms for hit in hits) and signs.present(prepared.plain_tokens):
            hits = [hit for hit in hits if hit.matched not in signs.not_terms]
    if hits:
        _annotate(hits, prepared.plain_tokens, negation_window, lexicon)
    return hits
