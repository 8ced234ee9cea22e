"""The shipped prompt lexicons and phrase rules, loaded once and compiled into lookup tables.

Lexicons are YAML data under `policies/data/prompt_lexicons/` (one file per language, plus
`rules.yaml` for the phrase rules). This module reads them, normalises every term with the same
`normalise` the prompts go through, and builds the tables the filter looks tokens up in:

- `exact`: token n-gram (space-joined) -> tags, including automatic plural forms;
- `skeletons`: the `skeleton` of each term -> tags, for tokens that look obfuscated;
- `prefixes`: word prefixes ("kinderporn*") for compound-building languages;
- `cjk`: one compiled regex for terms in scripts written without spaces (Japanese).
- `modifiers`: terms that name a shade, a product or a dish before one of their nouns (the
  `benign_modifiers` section: "nude matte lipstick"), for the matcher's benign annotation;
  `modifiers_after`, the same after their noun (`nouns_before`: "rouge a levres nude").
- `language_signs`: how a field is told to be in a language (the `reads_as` section), and which
  single words of other languages' lexicons are plain words there: Portuguese "no" is "in the",
  not the English and Spanish negation cue; French "son" is "his, her", not the English "son" of
  the minor group.

A tag says what a term is: a category term at a tier ("sexual", "strong"), or a member of a named
group used by phrase rules ("minor", "deceptive_framing", "negation", "benign" ...).

What this module must never do: decide anything about a prompt, or do I/O other than reading the
packaged data files (and a tenant's extra terms handed to it as plain data).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from policies.prompt_normalise import normalise, skeleton, tokenise
from policies.prompt_spelling import SpellingIndex, lexicon_words, load_known_near

__all__ = [
    "CATEGORIES",
    "TIERS",
    "Lexicon",
    "PhraseRule",
    "Tag",
    "load_lexicon",
    "LEXICON_DIR",
    "MODIFIER_GAP",
]

LEXICON_DIR = Path(__file__).parent / "data" / "prompt_lexicons"

CATEGORIES: tuple[str, ...] = (
    "sexual_minors", "sexual", "violence", "self_harm", "hate", "weapons", "drugs",
    "public_figures",
)
#: strong: one hit is enough; contextual: enough unless the field has a benign context cue for
#: the category; weak: only counts with a second distinct term of the category (or in a rule).
TIERS: tuple[str, ...] = ("strong", "contextual", "weak")

#: Scripts written without spaces between words: matched as substrings, not tokens.
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f]")
_KATAKANA_ONLY = re.compile(r"[\u30a0-\u30ff]+")
_KATAKANA_CLASS = "\u30a0-\u30ff\uff66-\uff9f"
#: How many filler words may stand between a benign modifier and its noun.
MODIFIER_GAP = 3


@dataclass(frozen=True, slots=True)
class Tag:
    """What a lexicon entry means. `name` is a category or a group; `tier` is set for
    categories; `language` is the lexicon file it came from ("tenant" for tenant terms)."""

    name: str
    tier: str | None
    language: str
    term: str  # the normalised lexicon term

    @property
    def is_category(self) -> bool:
        return self.tier is not None


@dataclass(frozen=True, slots=True)
class PhraseRule:
    """A combination that makes a category: one hit from each slot, anywhere in the request.

    A slot lists selectors: a group name ("minor"), a category at a tier ("sexual:weak"; a bare
    category means strong), optionally prefixed by a role: "negative:" (only hits in negative-
    prompt fields) or "negated:" (only hits under a negation cue).

    `near` (optional) makes the first two slots a collocation: their hits must be words of the
    same field, not overlapping, with at most `near` words (and no punctuation) between them
    ("smoking ice", "head ... cut off"); any further slot may match anywhere.
    """

    rule_id: str
    category: str
    slots: tuple[tuple[str, ...], ...]
    honour_negation: bool = True
    honour_allow_terms: bool = True
    near: int | None = None


@dataclass(frozen=True, slots=True)
class LanguageSigns:
    """How a field is told to be in `language` (one of `words`, or two of `short`), and the single
    words of other languages' lexicons, terms or cues, that are plain words in it (Portuguese "no":
    "in the"; French "son": "his, her")."""

    language: str
    words: frozenset[str]
    short: frozenset[str]
    not_terms: frozenset[str]

    def present(self, tokens: list[str]) -> bool:
        short = 0
        for token in tokens:
            if token in self.words:
                return True
            if token in self.short:
                short += 1
                if short == 2:
                    return True
        return False


@dataclass
class Lexicon:
    """Compiled lookup tables for all shipped languages (plus any tenant extra terms)."""

    exact: dict[str, tuple[Tag, ...]] = field(default_factory=dict)
    skeletons: dict[str, tuple[Tag, ...]] = field(default_factory=dict)
    prefixes: dict[str, tuple[Tag, ...]] = field(default_factory=dict)
    prefix_lengths: tuple[int, ...] = ()
    prefix_heads: frozenset[str] = frozenset()
    ngram_heads: frozenset[str] = frozenset()
    #: Every proper prefix of two or more words of a multi-word `exact` key ("lines on a" for
    #: "lines on a mirror"): an n-gram outside this set cannot grow into an entry.
    ngram_prefixes: frozenset[str] = frozenset()
    max_ngram: int = 1
    cjk_terms: dict[str, tuple[Tag, ...]] = field(default_factory=dict)
    cjk_pattern: re.Pattern[str] | None = None
    run_terms: dict[str, tuple[Tag, ...]] = field(default_factory=dict)
    run_lengths: tuple[int, ...] = ()
    benign_context: dict[str, frozenset[str]] = field(default_factory=dict)
    benign_words: dict[str, frozenset[str]] = field(default_factory=dict)
    #: Words that are units of measure right after a number ("5 kms"): a hit on one there is benign.
    units: frozenset[str] = frozenset()
    #: Terms that name a shade, a product or a dish when they modify one of their nouns ("nude
    #: lipstick", "bottomless brunch"): term -> nouns, plurals included. At most `MODIFIER_GAP` words of
    #: `modifier_fillers` (materials, finishes: "nude matte lipstick") may stand between them.
    modifiers: dict[str, frozenset[str]] = field(default_factory=dict)
    #: The same after their noun, in the word order of French, Spanish and Portuguese ("rouge à
    #: lèvres nude", "batom nude"): term -> the nouns it may follow.
    modifiers_after: dict[str, frozenset[str]] = field(default_factory=dict)
    modifier_fillers: frozenset[str] = frozenset()
    #: Per language with a `reads_as` section: how a field is told to be in it, and which words of
    #: other languages' lexicons are plain words there.
    language_signs: tuple[LanguageSigns, ...] = ()
    rules: tuple[PhraseRule, ...] = ()
    languages: tuple[str, ...] = ()
    fingerprint: str = ""
    term_count: int = 0
    #: Misspellings of shipped lexicon words ("fertlizer"), read as the word (`prompt_spelling`).
    spelling: SpellingIndex | None = None

    def blocked_terms(self, category: str) -> list[str]:
        """Every strong term of `category` (normalised, Latin-script tokens), for tests."""
        terms = {
            tag.term
            for tags in self.exact.values()
            for tag in tags
            if tag.name == category and tag.tier == "strong" and tag.language != "tenant"
        }
        return sorted(terms)


def _plural_forms(term: str) -> list[str]:
    words = term.split(" ")
    last = words[-1]
    if not last.isascii() or not last.isalpha() or len(last) < 3:
        return []
    if last.endswith(("s", "x", "z", "ch", "sh")):
        endings = ["es"]
    elif last.endswith("y") and last[-2:-1] not in "aeiou":
        endings = ["s"]  # "ies" plurals are listed explicitly where they matter
    else:
        endings = ["s"]
    return [" ".join(words[:-1] + [last + ending]) for ending in endings]


class _Builder:
    def __init__(self) -> None:
        self.exact: dict[str, list[Tag]] = {}
        self.skeletons: dict[str, list[Tag]] = {}
        self.prefixes: dict[str, list[Tag]] = {}
        self.cjk: dict[str, list[Tag]] = {}
        self.runs: dict[str, list[Tag]] = {}
        self.count = 0

    @staticmethod
    def _put(table: dict[str, list[Tag]], key: str, tag: Tag) -> None:
        bucket = table.setdefault(key, [])
        if tag not in bucket:
            bucket.append(tag)

    def add(self, raw: str, name: str, tier: str | None, language: str) -> None:
        raw = str(raw).strip()
        exact_only = raw.endswith("!")
        prefix = raw.endswith("*")
        text = raw.rstrip("!*").strip()
        if not text:
            return
        if _CJK.search(text):
            term = normalise(text, leet=False).replace(" ", "")
            self._put(self.cjk, term, Tag(name, tier, language, term))
            self.count += 1
            return
        # A benign phrase may keep its commas ("intercourse, pennsylvania"): the place name is written
        # with one, and a bare word of it must stay a term. Category terms never span punctuation.
        keep = {","} if name == "benign" else set()
        tokens = [token for token in tokenise(normalise(text, leet=False))
                  if token.isalnum() or "_" in token or token in keep]
        while tokens and tokens[-1] in keep:
            tokens.pop()
        if not tokens or tokens[0] in keep:
            return
        term = " ".join(tokens)
        tag = Tag(name, tier, language, term)
        self.count += 1
        if prefix and len(tokens) == 1:
            self._put(self.prefixes, term, tag)
            self._put(self.prefixes, skeleton(term), tag)
            return
        forms = [term] + ([] if exact_only else _plural_forms(term))
        for form in forms:
            self._put(self.exact, form, tag)
            self._put(self.skeletons, " ".join(skeleton(word) for word in form.split(" ")), tag)
        if tier is not None and len(skeleton("".join(tokens))) >= 3:
            self._put(self.runs, skeleton("".join(tokens)), tag)

    def build(self, lexicon: Lexicon) -> None:
        lexicon.exact = {key: tuple(tags) for key, tags in self.exact.items()}
        lexicon.skeletons = {key: tuple(tags) for key, tags in self.skeletons.items()}
        lexicon.prefixes = {key: tuple(tags) for key, tags in self.prefixes.items()}
        lexicon.prefix_lengths = tuple(sorted({len(key) for key in self.prefixes}))
        lexicon.prefix_heads = frozenset(key[:3] for key in self.prefixes)
        lexicon.ngram_heads = frozenset(key.split(" ")[0] for key in self.exact if " " in key) | frozenset(
            key.split(" ")[0] for key in self.skeletons if " " in key
        )
        lexicon.ngram_prefixes = frozenset(
            " ".join(words[:length])
            for words in (key.split(" ") for key in self.exact if " " in key)
            for length in range(2, len(words))
        )
        lexicon.max_ngram = max((key.count(" ") + 1 for key in self.exact), default=1)
        lexicon.cjk_terms = {key: tuple(tags) for key, tags in self.cjk.items()}
        lexicon.cjk_pattern = _compile_cjk(self.cjk) if self.cjk else None
        lexicon.run_terms = {key: tuple(tags) for key, tags in self.runs.items()}
        lexicon.run_lengths = tuple(sorted({len(key) for key in self.runs}))
        lexicon.term_count = self.count


def _compile_cjk(terms: Iterable[str]) -> re.Pattern[str]:
    parts = []
    for term in sorted(terms, key=len, reverse=True):
        escaped = re.escape(term)
        if _KATAKANA_ONLY.fullmatch(term):
            # katakana words run together: "ロリ" must not match inside "カロリー" (calorie)
            escaped = f"(?<![{_KATAKANA_CLASS}]){escaped}(?![{_KATAKANA_CLASS}])"
        parts.append(escaped)
    return re.compile("|".join(parts))


#: libyaml's safe loader where PyYAML was built with it (the same documents, about 8x faster to
#: parse: parsing was most of a filter's build, once per distinct tenant policy), else PyYAML's own.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _TermLoader(_SafeLoader):  # type: ignore[misc, valid-type]
    """YAML without implicit booleans: "no", "on", "off" are words in a lexicon, not False."""


_TermLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in _SafeLoader.yaml_implicit_resolvers.items()
}


def _read_yaml(path: Path, *, terms: bool) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        data = yaml.load(handle, Loader=_TermLoader if terms else _SafeLoader)  # noqa: S506
        data = data or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def _add_language(builder: _Builder, data: Mapping[str, Any], language: str,
                  benign_context: dict[str, set[str]], benign_words: dict[str, set[str]],
                  units: set[str], modifiers: dict[str, set[str]], modifiers_after: dict[str, set[str]],
                  fillers: set[str], language_signs: list[LanguageSigns]) -> None:
    for category, tiers in (data.get("categories") or {}).items():
        if category not in CATEGORIES:
            raise ValueError(f"lexicon {language}: unknown category {category!r}")
        for tier, terms in (tiers or {}).items():
            if tier not in TIERS:
                raise ValueError(f"lexicon {language}: unknown tier {tier!r} in {category}")
            for term in terms or ():
                builder.add(term, category, tier, language)
    for group, terms in (data.get("groups") or {}).items():
        for term in terms or ():
            builder.add(term, group, None, language)
    for term in data.get("benign_phrases") or ():
        builder.add(str(term) + "!", "benign", None, language)
    units.update(normalise(str(unit), leet=False) for unit in data.get("units") or ())
    section = data.get("benign_modifiers") or {}
    fillers.update(normalise(str(word), leet=False) for word in section.get("fillers") or ())
    for entry in section.get("modifiers") or ():
        found = False
        for key, target in (("nouns", modifiers), ("nouns_before", modifiers_after)):
            nouns = {normalise(str(noun), leet=False) for noun in entry.get(key) or ()}
            if any(" " in noun for noun in nouns):
                raise ValueError(f"lexicon {language}: a benign modifier needs one-word nouns: {entry!r}")
            if not nouns:
                continue
            found = True
            nouns.update(plural for noun in list(nouns) for plural in _plural_forms(noun))
            for term in entry.get("terms") or ():
                target.setdefault(normalise(str(term), leet=False), set()).update(nouns)
        if not found:
            raise ValueError(f"lexicon {language}: a benign modifier needs one-word nouns: {entry!r}")
    for key, target in (("benign_context", benign_context), ("benign_words", benign_words)):
        for category, cues in (data.get(key) or {}).items():
            target.setdefault(category, set()).update(normalise(str(cue), leet=False) for cue in cues or ())
    reads_as = data.get("reads_as")
    if reads_as:
        words, short, not_terms = (
            frozenset(normalise(str(word), leet=False) for word in reads_as.get(key) or ())
            for key in ("words", "short", "not_terms"))
        if not (words or short) or not not_terms:
            raise ValueError(f"lexicon {language}: reads_as needs words or short, and not_terms")
        language_signs.append(LanguageSigns(language, words, short, not_terms))


def _parse_rules(data: Mapping[str, Any]) -> tuple[PhraseRule, ...]:
    rules = []
    for item in data.get("rules") or ():
        category = item["category"]
        if category not in CATEGORIES:
            raise ValueError(f"rule {item.get('id')}: unknown category {category!r}")
        slots = tuple(tuple(str(selector) for selector in slot) for slot in item["all_of"])
        near = item.get("near")
        if near is not None and (len(slots) < 2 or int(near) < 0):
            raise ValueError(f"rule {item.get('id')}: 'near' needs two slots and a distance >= 0")
        rules.append(PhraseRule(
            rule_id=str(item["id"]),
            category=category,
            slots=slots,
            honour_negation=bool(item.get("honour_negation", True)),
            honour_allow_terms=bool(item.get("honour_allow_terms", True)),
            near=None if near is None else int(near),
        ))
    return tuple(rules)


def load_lexicon(
    directory: Path = LEXICON_DIR,
    *,
    extra_terms: Mapping[str, Iterable[str]] | None = None,
    allow_terms: Iterable[str] = (),
    misspellings: bool = True,
) -> Lexicon:
    """Load every `*.yaml` lexicon in `directory` (and `rules.yaml`), add the tenant's extra
    terms (strong, per category) and allow terms (treated as benign phrases), and compile.
    With `misspellings`, a non-word one edit from a word of the shipped lexicons is read as that
    word (`policies.prompt_spelling`); only for the shipped directory, whose list of real words
    near its words ships with it."""
    builder = _Builder()
    benign_context: dict[str, set[str]] = {}
    benign_words: dict[str, set[str]] = {}
    units: set[str] = set()
    modifiers: dict[str, set[str]] = {}
    modifiers_after: dict[str, set[str]] = {}
    fillers: set[str] = set()
    language_signs: list[LanguageSigns] = []
    languages = []
    digest = hashlib.sha256()
    rules: tuple[PhraseRule, ...] = ()
    for path in sorted(directory.glob("*.yaml")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
        if path.stem == "rules":
            rules = _parse_rules(_read_yaml(path, terms=False))
            continue
        data = _read_yaml(path, terms=True)
        language = str(data.get("language", path.stem))
        languages.append(language)
        _add_language(builder, data, language, benign_context, benign_words, units, modifiers, modifiers_after,
                      fillers, language_signs)
    spelling = None
    if misspellings and directory.resolve() == LEXICON_DIR.resolve():
        spelling = _spelling_index(digest.hexdigest(), builder.exact)
        digest.update(spelling.fingerprint.encode())
    tenant = {"extra_terms": {}, "allow_terms": []}
    for category, terms in sorted((extra_terms or {}).items()):
        terms = sorted(str(term) for term in terms)
        tenant["extra_terms"][category] = terms
        for term in terms:
            builder.add(term, category, "strong", "tenant")
    for term in sorted(str(term) for term in allow_terms):
        tenant["allow_terms"].append(term)
        builder.add(term + "!", "allow", None, "tenant")
    digest.update(json.dumps(tenant, sort_keys=True).encode())
    lexicon = Lexicon(
        benign_context={key: frozenset(value) for key, value in benign_context.items()},
        benign_words={key: frozenset(value) for key, value in benign_words.items()},
        units=frozenset(units),
        modifiers={term: frozenset(nouns) for term, nouns in modifiers.items()},
        modifiers_after={term: frozenset(nouns) for term, nouns in modifiers_after.items()},
        modifier_fillers=frozenset(fillers),
        language_signs=tuple(language_signs),
        rules=rules,
        languages=tuple(languages),
        fingerprint=digest.hexdigest(),
        spelling=spelling,
    )
    builder.build(lexicon)
    return lexicon


#: Shipped lexicon digest -> its spelling index: the same for every tenant policy.
_SPELLING_INDEXES: dict[str, SpellingIndex] = {}


def _spelling_index(shipped_digest: str, exact: Mapping[str, object]) -> SpellingIndex:
    """The misspelling index over the words of the shipped lexicons (never a tenant's terms)."""
    index = _SPELLING_INDEXES.get(shipped_digest)
    if index is None:
        known_near, fingerprint = load_known_near()
        index = _SPELLING_INDEXES[shipped_digest] = SpellingIndex(lexicon_words(exact), known_near,
                                                                  known_near_fingerprint=fingerprint)
    return index
