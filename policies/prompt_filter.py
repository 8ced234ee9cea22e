"""Prompt-side filtering: decide, before anything is sent upstream, whether a generation request's
text asks for content the tenant's policy blocks or wants reviewed.

`PromptFilter(policy)` is configured once (lexicons loaded and compiled) and then called per
request with every text field that reaches the model: `check({"prompt": ..., "negative_prompt":
..., "style": ...}) -> PromptVerdict`. Layers, cheapest first:

1. lexicon: terms of a category, per language, matched on word boundaries of the normalised text
   (and on obfuscation skeletons, spaced-out runs, Japanese substrings);
2. phrase: combinations (a minor term with a sexual term, a real person's name with a deceptive
   framing, an instruction cue with a weapon ...), negation and benign phrases;
3. paraphrase (optional, off by default): embedding similarity to labelled example prompts.

Every verdict says why (`PromptReason`: category, layer, rule, term as normalised, field,
score). `PromptVerdict.public_message()` names the category in plain words for the client and
never echoes the offending terms.

What this module must never do: touch the network, the exchange or any store; echo prompt text
into public messages; let any policy setting, negation or allow term lift a block for sexual
content involving minors.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policies.decisions import SEVERITY, Action, Decision
from policies.prompt_lexicon import CATEGORIES, LEXICON_DIR, Lexicon, PhraseRule, load_lexicon
from policies.prompt_matcher import Hit, scan_field
from policies.prompt_normalise import normalise, prepare
from policies.prompt_policy import PromptPolicy

if TYPE_CHECKING:
    from policies.paraphrase import ParaphraseMatcher

__all__ = [
    "CATEGORY_DESCRIPTIONS",
    "PromptFilter",
    "PromptReason",
    "PromptVerdict",
    "normalise",
]

#: Plain words for each category, used in client-facing messages.
CATEGORY_DESCRIPTIONS: dict[str, str] = {
    "sexual_minors": "sexual content involving minors",
    "sexual": "sexual content",
    "violence": "graphic violence",
    "self_harm": "self-harm",
    "hate": "hateful content",
    "weapons": "instructions for weapons",
    "drugs": "illegal drugs",
    "public_figures": "deceptive images of real people",
}

_UNSPACED_SCRIPT = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff]")
_CATEGORY_RANK = {category: rank for rank, category in enumerate(CATEGORIES)}
_ALWAYS_BLOCKED = "sexual_minors"


@dataclass(frozen=True, slots=True)
class PromptReason:
    """Why one category matched: which layer and rule, the matched term as normalised, in which
    field, with which score (1.0 for lexical layers; for paraphrase, the score of
    `policies.paraphrase`: the trained head's probability that the prompt is not safe)."""

    category: str
    layer: str  # "lexicon" | "phrase" | "paraphrase"
    rule_id: str
    term: str
    field: str
    score: float
    action: Action

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "layer": self.layer,
            "rule_id": self.rule_id,
            "term": self.term,
            "field": self.field,
            "score": round(self.score, 4),
            "action": self.action.value,
        }


@dataclass(frozen=True, slots=True)
class PromptVerdict:
    """The filter's answer for one request: the action to take, the deciding category and every
    reason found (reasons for categories the policy allows are kept for the audit trail)."""

    action: Action
    category: str | None
    reasons: list[PromptReason] = field(default_factory=list)
    policy_version: str = ""

    def public_message(self) -> str:
        """A short reason for the client: names the category in plain words, never the terms."""
        if self.action is Action.ALLOW or self.category is None:
            return "The prompt was accepted."
        description = CATEGORY_DESCRIPTIONS.get(self.category, "content the policy does not permit")
        if self.action is Action.FLAG:
            return f"The prompt was accepted and queued for review: it may involve {description}."
        return f"The prompt was rejected by the content policy: it appears to request {description}."

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action.value,
            "category": self.category,
            "reasons": [reason.to_dict() for reason in self.reasons],
            "policy_version": self.policy_version,
        }

    def to_decision(self, stage: str = "prompt") -> Decision:
        """The verdict as the pipeline's shared `Decision` (for the exchange and the audit)."""
        score = max((reason.score for reason in self.reasons if reason.category == self.category), default=None)
        return Decision(
            stage=stage,
            action=self.action,
            category=self.category,
            score=score,
            reason=self.public_message(),
            details={"reasons": [reason.to_dict() for reason in self.reasons],
                     "policy_version": self.policy_version},
        )


def _selector(selector: str) -> tuple[str, str, str | None]:
    """Parse "negative:clothing" / "sexual:weak" / "minor" into (role, name, tier)."""
    role = "positive"
    if selector.startswith(("negative:", "negated:")):
        role, selector = selector.split(":", 1)
    name, _, tier = selector.partition(":")
    if name in CATEGORIES:
        return role, name, tier or "strong"
    return role, name, None


class _CueSet:
    """Benign context cues of one category, split for fast lookup: single words (set test),
    phrases (padded substring test, one compiled alternation) and unspaced-script cues (substring
    test)."""

    __slots__ = ("words", "phrases", "unspaced")

    def __init__(self, cues: frozenset[str]) -> None:
        self.words = frozenset(cue for cue in cues if " " not in cue and not _UNSPACED_SCRIPT.search(cue))
        phrases = sorted(f" {cue} " for cue in cues if " " in cue and not _UNSPACED_SCRIPT.search(cue))
        self.phrases = re.compile("|".join(map(re.escape, phrases))) if phrases else None
        self.unspaced = tuple(cue for cue in cues if _UNSPACED_SCRIPT.search(cue))

    def present(self, tokens: frozenset[str], plain: str, spaced: str) -> bool:
        """`spaced` is the field's tokens joined by single spaces and padded with one, so that a
        phrase cue is found next to punctuation ("anatomy diagram, labelled") and across a
        hyphen ("first-aid kit"), as the lexicon's own phrases are."""
        if not self.words.isdisjoint(tokens):
            return True
        if self.phrases is not None and self.phrases.search(spaced) is not None:
            return True
        if self.unspaced and not plain.isascii():
            compact = plain.replace(" ", "")
            return any(cue in compact for cue in self.unspaced)
        return False


class PromptFilter:
    """Screens the text fields of one generation request against the lexicons and the policy."""

    def __init__(
        self,
        policy: PromptPolicy | None = None,
        *,
        lexicon_dir: Path = LEXICON_DIR,
        paraphrase: ParaphraseMatcher | None = None,
    ) -> None:
        self.policy = policy or PromptPolicy()
        self.lexicon: Lexicon = load_lexicon(
            lexicon_dir, extra_terms=self.policy.extra_terms, allow_terms=self.policy.allow_terms,
            misspellings=self.policy.misspellings,
        )
        self._rules = [
            (rule, [[_selector(selector) for selector in slot] for slot in rule.slots])
            for rule in self.lexicon.rules
        ]
        #: Name -> (rule, slot) pairs that name can fill: only rules whose every slot has a
        #: candidate among the names found in a request are looked at.
        self._slot_index: dict[str, list[tuple[int, int]]] = {}
        for rule_index, (_, slots) in enumerate(self._rules):
            for slot_index, slot in enumerate(slots):
                for name in dict.fromkeys(name for _, name, _ in slot):
                    self._slot_index.setdefault(name, []).append((rule_index, slot_index))
        self._rules_need_hits = all(rule.slots for rule in self.lexicon.rules)
        self._negative_fields = frozenset(self.policy.negative_fields)
        self._cues = {key: _CueSet(cues) for key, cues in self.lexicon.benign_context.items() if key != _ALWAYS_BLOCKED}
        self._words = {key: _CueSet(cues) for key, cues in self.lexicon.benign_words.items() if key != _ALWAYS_BLOCKED}
        self._paraphrase = paraphrase
        if paraphrase is None and self.policy.paraphrase.enabled:
            from policies.paraphrase import ParaphraseMatcher  # optional dependency, loaded lazily

            self._paraphrase = ParaphraseMatcher.from_package()
        digest = hashlib.sha256(self.lexicon.fingerprint.encode())
        digest.update(self.policy.model_dump_json().encode())
        if self._paraphrase is not None:
            digest.update(self._paraphrase.fingerprint.encode())
        self._fingerprint = digest.hexdigest()

    def policy_fingerprint(self) -> str:
        """A stable hash of the lexicons, rules, examples and policy settings in force."""
        return self._fingerprint

    def check_text(self, text: str) -> PromptVerdict:
        return self.check({"prompt": text})

    def check(self, texts: Mapping[str, str]) -> PromptVerdict:
        """Screen every text field of a request (field name -> text)."""
        hits: list[Hit] = []
        tokens: dict[str, list[str]] = {}
        positive_texts: list[tuple[str, str]] = []
        benign_categories: set[str] = set()
        window = self.policy.negation_window
        for field_name, text in texts.items():
            if not text:
                continue
            negative = field_name in self._negative_fields and not self.policy.screen_negative_as_positive
            prepared = prepare(str(text))
            field_hits = scan_field(self.lexicon, prepared, field_name, negative=negative,
                                    negation_window=window)
            tokens[field_name] = prepared.plain_tokens
            if not negative:
                positive_texts.append((field_name, prepared.plain))
                if field_hits:
                    benign_categories |= self._apply_context(field_hits, prepared.plain_tokens, prepared.plain)
            hits += field_hits
        if not hits and self._rules_need_hits:
            reasons: list[PromptReason] = []  # nothing found in any field: no layer has a reason
        else:
            reasons = (self._lexicon_reasons(hits, benign_categories)
                       + self._phrase_reasons(hits, benign_categories, tokens))
        verdict = self._verdict(reasons)
        if self._paraphrase is not None and self.policy.paraphrase.enabled and positive_texts:
            if verdict.action is Action.ALLOW or not self.policy.paraphrase.only_when_lexical_allows:
                reasons += self._paraphrase_reasons(positive_texts)
                verdict = self._verdict(reasons)
        return verdict

    # --- layers -------------------------------------------------------------------------------

    def _apply_context(self, hits: list[Hit], tokens: list[str], plain: str) -> set[str]:
        """Find the categories with a benign context cue in this field ("anatomy diagram",
        "suicide prevention hotline"). In such a field contextual-tier hits lose their strength
        unless another term of the same category is present; the returned categories also
        switch off weak combinations and phrase rules (never for sexual content with minors)."""
        words = frozenset(tokens)
        spaced = f" {' '.join(tokens)} "
        cued = {category for category, cues in self._cues.items() if cues.present(words, plain, spaced)}
        contextual = [(hit, tag) for hit in hits for tag in hit.tags if tag.tier == "contextual"]
        if not contextual:
            return cued
        disambiguated = cued | {
            category for category, cues in self._words.items() if cues.present(words, plain, spaced)
        }
        for hit, tag in contextual:
            if tag.name not in disambiguated:
                continue
            stronger = any(
                other_tag.name == tag.name and other_tag.tier != "contextual"
                for other in hits if other is not hit and not other.benign and not other.negated
                and not _inside(other, hit)
                for other_tag in other.tags
            )
            if not stronger:
                hit.benign = True
        return cued

    def _usable(self, hit: Hit, category: str, *, honour_negation: bool = True,
                honour_allow: bool = True) -> bool:
        if hit.negative or hit.benign:
            return False
        if category == _ALWAYS_BLOCKED:
            return True
        if honour_allow and hit.allowed:
            return False
        return not (honour_negation and hit.negated)

    def _lexicon_reasons(self, hits: list[Hit], benign_categories: set[str]) -> list[PromptReason]:
        reasons: list[PromptReason] = []
        weak: dict[str, dict[str, Hit]] = {}
        seen: set[tuple[str, str | None, str, int, int, tuple[int, int] | None]] = set()
        for hit in hits:
            for tag in hit.tags:
                if tag.tier is None or not self._usable(hit, tag.name):
                    continue
                where = (tag.name, tag.tier, hit.field, hit.start, hit.end, hit.chars)
                if hit.start >= 0 and where in seen and tag.tier != "weak":
                    continue  # the same word found again through another variant (a weak copy never hides a strong one)
                seen.add(where)
                if tag.tier == "weak":
                    weak.setdefault(tag.name, {}).setdefault(tag.term, hit)
                    continue
                if tag.tier == "contextual":
                    weak.setdefault(tag.name, {}).setdefault(tag.term, hit)
                reasons.append(self._reason(tag.name, "lexicon", f"{tag.name}.{tag.tier}.{tag.language}",
                                            tag.term if hit.via in ("skeleton", "typo", "run") else hit.matched,
                                            hit.field))
        for category, terms in weak.items():
            if _separate_words(terms.values()) < 2 or category in benign_categories:
                continue
            if any(reason.category == category for reason in reasons):
                continue
            matched = " + ".join(sorted(terms)[:3])
            first = next(iter(terms.values()))
            reason = self._reason(category, "phrase", f"{category}.weak_combination", matched, first.field)
            if reason.action is Action.BLOCK and category != _ALWAYS_BLOCKED:
                # two weak terms are evidence, not proof: send to review rather than reject
                reason = replace(reason, action=Action.FLAG, score=0.5)
            reasons.append(reason)
        return reasons

    def _phrase_reasons(self, hits: list[Hit], benign_categories: set[str],
                        tokens: Mapping[str, list[str]]) -> list[PromptReason]:
        reasons: list[PromptReason] = []
        by_name: dict[str, list[Hit]] = {}
        for hit in hits:
            for tag in hit.tags:
                by_name.setdefault(tag.name, []).append(hit)
        filled: dict[int, set[int]] = {}
        for name in by_name:
            for rule_index, slot_index in self._slot_index.get(name, ()):
                filled.setdefault(rule_index, set()).add(slot_index)
        if not self._rules_need_hits:  # a rule without slots always applies
            filled.update({index: set() for index, (_, slots) in enumerate(self._rules) if not slots})
        for rule_index in sorted(filled):
            rule, slots = self._rules[rule_index]
            if len(filled[rule_index]) < len(slots):
                continue  # some slot has no candidate at all
            if rule.category in benign_categories:
                continue
            found: list[Hit] = []
            rest = slots
            if rule.near is not None:
                pair = self._near_pair(rule, slots[0], slots[1], by_name, tokens)
                if pair is None:
                    continue
                found = list(pair)
                rest = slots[2:]
            for slot in rest:
                candidates = [hit for _, name, _ in slot for hit in by_name.get(name, ())]
                match = next((hit for hit in candidates
                              if all(hit is not used for used in found) and self._slot_matches(rule, slot, hit)), None)
                if match is None:
                    break
                found.append(match)
            else:
                terms = " + ".join(dict.fromkeys(self._term(hit, slot) for hit, slot in zip(found, slots)))
                reasons.append(self._reason(rule.category, "phrase", rule.rule_id, terms, found[0].field))
        return reasons

    def _near_pair(self, rule: PhraseRule, first: list[tuple[str, str, str | None]],
                   second: list[tuple[str, str, str | None]], by_name: Mapping[str, list[Hit]],
                   tokens: Mapping[str, list[str]]) -> tuple[Hit, Hit] | None:
        """Two hits, one per slot, that are words of one field at most `rule.near` words apart,
        with only words between them (a comma ends a collocation)."""
        lefts = [hit for _, name, _ in first for hit in by_name.get(name, ())
                 if hit.start >= 0 and self._slot_matches(rule, first, hit)]
        if not lefts:
            return None
        rights = [hit for _, name, _ in second for hit in by_name.get(name, ())
                  if hit.start >= 0 and self._slot_matches(rule, second, hit)]
        assert rule.near is not None
        for left in lefts:
            for right in rights:
                if left is right or left.field != right.field:
                    continue
                if left.end <= right.start:
                    gap = (left.end, right.start)
                elif right.end <= left.start:
                    gap = (right.end, left.start)
                else:
                    continue  # overlapping hits are one phrase, not a collocation of two
                if gap[1] - gap[0] > rule.near:
                    continue
                between = tokens[left.field][gap[0]:gap[1]]
                if all(token[0].isalnum() or token[0] == "_" for token in between):
                    return left, right
        return None

    def _slot_matches(self, rule: PhraseRule, slot: list[tuple[str, str, str | None]], hit: Hit) -> bool:
        for role, name, tier in slot:
            if not hit.has(name, tier):
                continue
            if role == "negative":
                if hit.negative and not hit.benign:
                    return True
            elif role == "negated":
                if not hit.negative and not hit.benign and hit.negated:
                    return True
            elif not hit.negative and not hit.benign:
                if rule.category == _ALWAYS_BLOCKED:
                    return True
                if rule.honour_allow_terms and hit.allowed:
                    continue
                if rule.honour_negation and hit.negated:
                    continue
                return True
        return False

    @staticmethod
    def _term(hit: Hit, slot: list[tuple[str, str, str | None]]) -> str:
        for _, name, tier in slot:
            for tag in hit.tags:
                if tag.name == name and tag.tier == tier:
                    return tag.term if hit.via in ("skeleton", "typo", "run") else hit.matched
        return hit.matched

    def _paraphrase_reasons(self, texts: list[tuple[str, str]]) -> list[PromptReason]:
        assert self._paraphrase is not None
        settings = self.policy.paraphrase
        reasons = []
        for field_name, text in texts:
            match = self._paraphrase.best_match(text)
            if match is None or match.score < settings.threshold:
                continue
            action = Action.FLAG if settings.action == "flag" else self.policy.action_for(match.category)
            if match.category == _ALWAYS_BLOCKED:
                action = Action.BLOCK if settings.action == "category" else Action.FLAG
            reasons.append(PromptReason(match.category, "paraphrase", f"paraphrase.{match.example_id}",
                                        match.category, field_name, match.score, action))
        return reasons

    def _reason(self, category: str, layer: str, rule_id: str, term: str, field_name: str) -> PromptReason:
        action = Action.BLOCK if category == _ALWAYS_BLOCKED else self.policy.action_for(category)
        return PromptReason(category, layer, rule_id, term, field_name, 1.0, action)

    def _verdict(self, reasons: list[PromptReason]) -> PromptVerdict:
        if not reasons:
            return PromptVerdict(Action.ALLOW, None, [], self._fingerprint)
        reasons = list(dict.fromkeys(reasons))  # the same term found by two variants counts once
        deciding = [reason for reason in reasons if reason.action is not Action.ALLOW]
        if not deciding:
            return PromptVerdict(Action.ALLOW, None, reasons, self._fingerprint)
        top = max(deciding, key=lambda reason: (SEVERITY[reason.action], -_CATEGORY_RANK[reason.category]))
        reasons = sorted(reasons, key=lambda reason: (-SEVERITY[reason.action], _CATEGORY_RANK[reason.category]))
        return PromptVerdict(top.action, top.category, reasons, self._fingerprint)


def _inside(inner: Hit, outer: Hit) -> bool:
    """`inner` is a word of the phrase `outer` was found as ("kkk" in "kkk rally"), not a term of
    its own beside it."""
    return (inner.field == outer.field and 0 <= outer.start <= inner.start and inner.end <= outer.end
            and inner.negative == outer.negative)


def _separate_words(hits: Collection[Hit]) -> int:
    """How many separate words or phrases the hits stand for: one token found as two lexicon
    entries ("nazis" as itself and as the plural of "nazi") or a word inside a phrase found with it
    counts once."""
    placed = list({(hit.field, hit.start, hit.end): hit for hit in hits if hit.start >= 0}.values())
    unplaced = sum(1 for hit in hits if hit.start < 0)
    return unplaced + sum(1 for hit in placed if not any(other is not hit and _inside(hit, other) for other in placed))
