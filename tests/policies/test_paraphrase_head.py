"""The paraphrase layer's trained classifier head: training on a synthetic embedding set (a fake,
deterministic encoder), reproducibility, the fingerprint that refuses a stale head, and the shipped
head against the shipped example files. No model needed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from policies.decisions import Action
from policies.paraphrase import (EXAMPLES_PATH, HEAD_PATH, LAYERS, MODEL_NAME, SAFE, ParaphraseHead, ParaphraseMatcher,
                                 StaleParaphraseHead, cross_validate, evaluation_overlap, load_examples,
                                 shipped_model_name, text_key, train_head, training_paths)
from policies.prompt_filter import PromptFilter
from policies.prompt_lexicon import CATEGORIES
from policies.prompt_policy import ParaphraseSettings, PromptPolicy

np = pytest.importorskip("numpy")
pytest.importorskip("scipy")

#: Every labelled evaluation set: nothing of them may be trained on.
DATA_FILES = [Path(__file__).resolve().parents[1] / "data" / name for name in ("prompt_eval.jsonl", "prompt_fresh.jsonl")]


class TopicEncoder:
    """One axis per topic word, plus 16 axes of noise drawn from a hash of the whole text (the same
    text always gets the same vector); rows are L2-normalised."""

    TOPICS = ("powder", "blade", "flag", "garden", "kitchen", "concert")

    def __call__(self, texts: list[str]) -> object:
        rows = []
        for text in texts:
            words = text.lower().split()
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            noise = np.random.default_rng(seed).normal(0.0, 0.35, 16)
            rows.append(np.concatenate([[float(words.count(topic)) for topic in self.TOPICS], noise]))
        vectors = np.array(rows)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


FILLER = ("on a table", "at night", "in the rain", "close up", "old photo", "wide shot", "in a city",
          "watercolor", "by the sea", "studio light", "in winter", "from above")


def _prompts(topic: str, count: int, offset: int = 0) -> list[str]:
    return [f"{topic} {FILLER[(i + offset) % len(FILLER)]} number {i + offset}" for i in range(count)]


def _files(tmp_path: Path) -> tuple[Path, Path]:
    bank = tmp_path / "bank.yaml"
    bank.write_text(yaml.safe_dump({"unsafe": {"drugs": _prompts("powder", 8), "violence": _prompts("blade", 8),
                                               "hate": _prompts("flag", 8)},
                                    "safe": _prompts("garden", 6) + _prompts("kitchen", 6) + _prompts("concert", 6)},
                                   sort_keys=False),
                    encoding="utf-8")
    training = tmp_path / "training.yaml"
    training.write_text(yaml.safe_dump({"unsafe": {"drugs": _prompts("powder", 12, 50),
                                                   "violence": _prompts("blade", 12, 50),
                                                   "hate": _prompts("flag", 12, 50)},
                                        "safe": _prompts("garden", 12, 50) + _prompts("kitchen", 12, 50)
                                        + _prompts("concert", 12, 50)}, sort_keys=False), encoding="utf-8")
    return bank, training


def test_training_separates_the_classes_and_is_reproducible(tmp_path: Path) -> None:
    bank, training = _files(tmp_path)
    head = train_head(TopicEncoder(), [bank, training], model_name="topic")
    assert head.classes == (SAFE, "drugs", "violence", "hate")
    assert dict(head.counts) == {SAFE: 54, "drugs": 20, "violence": 20, "hate": 20}
    matcher = ParaphraseMatcher(TopicEncoder(), bank, model_name="topic", head=head, training_files=[bank, training])
    unseen = {"powder in a red bag": "drugs", "blade by the door": "violence", "flag on a poster": "hate"}
    for text, category in unseen.items():
        match = matcher.best_match(text)
        assert match is not None and match.category == category and match.score > 0.9, (text, match)
        assert match.example_id.startswith(f"{category}.")  # the nearest reference example: the rule id
    for text in ("garden in the sun", "kitchen with copper pans", "concert crowd"):
        match = matcher.best_match(text)
        assert match is not None and match.score < 0.1, (text, match)
    # deterministic: the same files give the same weights, byte for byte
    again = train_head(TopicEncoder(), [bank, training], model_name="topic")
    assert again.to_json() == head.to_json()
    assert again.digest == head.digest


def test_the_filter_reports_the_head_category_as_a_paraphrase_reason(tmp_path: Path) -> None:
    bank, training = _files(tmp_path)
    head = train_head(TopicEncoder(), [bank, training], model_name="topic")
    matcher = ParaphraseMatcher(TopicEncoder(), bank, model_name="topic", head=head, training_files=[bank, training])
    policy = PromptPolicy(paraphrase=ParaphraseSettings(enabled=True, threshold=0.5))
    verdict = PromptFilter(policy, paraphrase=matcher).check_text("powder in a red bag")
    assert (verdict.action, verdict.category) == (Action.FLAG, "drugs")
    reason = verdict.reasons[0]
    assert reason.layer == "paraphrase" and reason.rule_id.startswith("paraphrase.drugs.") and reason.score > 0.9
    assert PromptFilter(policy, paraphrase=matcher).check_text("garden in the sun").action is Action.ALLOW


def test_saved_head_round_trips_and_is_covered_by_the_fingerprint(tmp_path: Path) -> None:
    bank, training = _files(tmp_path)
    head = train_head(TopicEncoder(), [bank, training], model_name="topic")
    path = tmp_path / "head.json"
    head.save(path)
    loaded = ParaphraseHead.load(path, paths=[bank, training], model_name="topic")
    assert loaded.to_json() == head.to_json()
    assert np.array_equal(loaded.weights, head.weights) and np.array_equal(loaded.bias, head.bias)
    plain = ParaphraseMatcher(TopicEncoder(), bank, model_name="topic")
    with_head = ParaphraseMatcher(TopicEncoder(), bank, model_name="topic", head=loaded,
                                  training_files=[bank, training])
    assert plain.fingerprint != with_head.fingerprint
    retrained = train_head(TopicEncoder(), [bank, training], model_name="topic", l2=1e-2)
    other = ParaphraseMatcher(TopicEncoder(), bank, model_name="topic", head=retrained, training_files=[bank, training])
    assert other.fingerprint != with_head.fingerprint


def test_a_stale_head_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    bank, training = _files(tmp_path)
    head = train_head(TopicEncoder(), [bank, training], model_name="topic")
    path = tmp_path / "head.json"
    head.save(path)
    with training.open("a", encoding="utf-8") as handle:
        handle.write("# one more line\n")  # any edit of a training file makes the head stale
    with pytest.raises(StaleParaphraseHead, match="imagegate prompts train-head") as error:
        ParaphraseHead.load(path, paths=[bank, training], model_name="topic")
    assert "training.yaml" in str(error.value) and "stale" in str(error.value)
    with pytest.raises(StaleParaphraseHead, match="imagegate prompts train-head"):
        ParaphraseMatcher(TopicEncoder(), bank, model_name="topic", head=head, training_files=[bank, training])
    with pytest.raises(StaleParaphraseHead, match="stale"):  # another model
        ParaphraseHead.load(path, paths=[bank, training], model_name="another-model")
    with pytest.raises(StaleParaphraseHead, match="imagegate prompts train-head"):  # no training file
        ParaphraseHead.load(path, paths=[bank], model_name="topic")
    with pytest.raises(StaleParaphraseHead, match="no trained paraphrase head"):
        ParaphraseHead.load(tmp_path / "missing.json", paths=[bank, training], model_name="topic")


def test_excluded_examples_stay_out_of_training_and_of_the_bank(tmp_path: Path) -> None:
    bank, training = _files(tmp_path)
    examples = load_examples([bank, training])
    overlap = evaluation_overlap(TopicEncoder(), examples, repeated=["Powder on a table, number 0!"],
                                 similar=["kitchen close up number 51"], threshold=0.999)
    assert overlap == ["bank.yaml:drugs.0", "training.yaml:safe.13"]
    head = train_head(TopicEncoder(), [bank, training], model_name="topic", exclude=overlap)
    assert head.excluded == tuple(sorted(overlap)) and dict(head.counts)["drugs"] == 19
    matcher = ParaphraseMatcher(TopicEncoder(), bank, model_name="topic", head=head, training_files=[bank, training])
    assert {matcher.best_match("powder on a table number 0").example_id} != {"drugs.0"}


class LayeredTopicEncoder(TopicEncoder):
    """`TopicEncoder`'s rows (the sentence vector) followed by 4 further feature columns, as the
    package encoder appends its middle layers: a "secret" topic only they carry, at a scale that
    would swamp any cosine similarity if the bank ever compared them, and the "blade" topic again."""

    sentence_dim = 6 + 16

    def __call__(self, texts: list[str]) -> object:
        extra = np.array([[50.0 * text.lower().split().count("secret"), float(text.lower().split().count("blade")),
                           0.0, 0.0] for text in texts])
        return np.hstack([super().__call__(texts), extra])


def test_extra_feature_columns_reach_the_head_but_never_the_bank(tmp_path: Path) -> None:
    bank, training = _files(tmp_path)
    plain = ParaphraseMatcher(TopicEncoder(), bank, model_name="topic")
    layered = ParaphraseMatcher(LayeredTopicEncoder(), bank, model_name="topic")
    texts = ["powder secret secret on a table", "garden secret in the rain", "blade at night"]
    pairs = list(zip(plain.scores(texts), layered.scores(texts), strict=True))
    assert [a is None for a, _ in pairs] == [b is None for _, b in pairs] == [False, True, False]
    for a, b in (pair for pair in pairs if pair[0] is not None):
        assert b is not None
        assert (a.category, a.example_id) == (b.category, b.example_id)  # the bank saw the sentence part only
        assert a.score == pytest.approx(b.score) and a.similarity == pytest.approx(b.similarity)
    head = train_head(LayeredTopicEncoder(), [bank, training], model_name="topic")
    assert head.weights.shape == (6 + 16 + 4 + 3 * 4 - 1, 4)  # the head reads all the columns
    assert np.abs(head.weights[23]).max() > 0.1  # the extra "blade" column got weights of its own
    matcher = ParaphraseMatcher(LayeredTopicEncoder(), bank, model_name="topic", head=head,
                                training_files=[bank, training])
    match = matcher.best_match("powder in a red bag")
    assert match is not None and match.category == "drugs" and match.score > 0.9
    # a head trained on other columns than the encoder gives is refused, not misread
    with pytest.raises(StaleParaphraseHead, match="reads 37 features and this encoder gives 33"):
        ParaphraseMatcher(TopicEncoder(), bank, model_name="topic", head=head, training_files=[bank, training])


def test_cross_validation_prefers_the_head_on_separable_data(tmp_path: Path) -> None:
    bank, training = _files(tmp_path)
    examples = load_examples([bank, training])
    vectors = TopicEncoder()([example.text for example in examples])
    report = cross_validate(vectors, examples, bank.name, folds=4)
    assert set(report) == {"head", "nearest examples"}
    assert report["head"]["auc"] > 0.95 and report["head"]["category_accuracy"] > 0.9
    assert cross_validate(vectors, examples, bank.name, folds=4) == report  # fixed seed


# --- the shipped head ------------------------------------------------------------------------------

def test_shipped_head_matches_the_shipped_example_files() -> None:
    """Fails after any edit of prompt_examples.yaml or a prompt_training*.yaml file until the head is
    retrained: `imagegate prompts train-head` (then recalibrate the threshold)."""
    head = ParaphraseHead.load(HEAD_PATH)  # raises StaleParaphraseHead when it does not match
    # the encoder with the shipped LoRA adapter (policies/paraphrase_adapter.py) merged in
    assert head.model_name == shipped_model_name() != MODEL_NAME and head.model_name.startswith(MODEL_NAME)
    assert head.files == tuple(path.name for path in training_paths())
    assert head.files == ("prompt_examples.yaml", "prompt_training.yaml", "prompt_training_pairs.yaml")
    bank = yaml.safe_load(EXAMPLES_PATH.read_text(encoding="utf-8"))
    assert head.classes == (SAFE, *bank["unsafe"]) and set(head.classes[1:]) == set(CATEGORIES)
    # the sentence embedding, then layers 3-5 mean-pooled, then the similarity features
    assert head.weights.shape == (384 * (1 + len(LAYERS)) + 3 * len(head.classes) - 1, len(head.classes))
    # the adapter's classifier: the sentence embedding's columns only
    assert np.abs(head.weights[:384]).max() > 0 and not head.weights[384:].any()
    assert HEAD_PATH.stat().st_size < 200_000


def test_shipped_head_was_trained_on_no_evaluation_prompt() -> None:
    head = ParaphraseHead.load(HEAD_PATH)
    evaluation = {text_key(json.loads(line)["prompt"]) for path in DATA_FILES
                  for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}
    trained = [example for example in load_examples(training_paths()) if example.id not in set(head.excluded)]
    assert sum(dict(head.counts).values()) == len(trained)
    assert [example.id for example in trained if text_key(example.text) in evaluation] == []
