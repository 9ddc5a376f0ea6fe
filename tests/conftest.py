"""Shared fixtures: one small real index (Wikipedia summaries) built once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SLICE = 300


@pytest.fixture(scope="session")
def wiki_slice():
    from gif_core.data import wiki_samples

    return wiki_samples()[:SLICE]


@pytest.fixture(scope="session")
def encoder():
    from gif_core.encoders import TextEncoder

    return TextEncoder()


@pytest.fixture(scope="session")
def small_index(tmp_path_factory, wiki_slice, encoder):
    from gif_core.config import BuildConfig
    from gif_core.engine import build

    out = tmp_path_factory.mktemp("idx") / "wiki300"
    build(wiki_slice, out, BuildConfig(ranker_queries=150), encoder=encoder)
    return out


@pytest.fixture(scope="session")
def engine(small_index, encoder):
    from gif_core.engine import Engine

    return Engine.load(small_index, encoder=encoder)


STAMPS_LISTED = 62
"""Stamps read from ``pkg:stamps`` for the app's image index (the reader also reports two
captions without a picture, which the build skips): enough for the build to fit its image
ranker (50+ images)."""


@pytest.fixture(scope="session")
def stamp_index(tmp_path_factory):
    """A small real image index (Tux Paint stamps) as the app opens it, built once per session
    (a few seconds); its directory and the listed stamps."""
    from gif_core.config import BuildConfig, ProbeConfig
    from gif_core.engine import build_images
    from gif_core.image_data import read_image_corpus

    corpus = read_image_corpus("pkg:stamps", limit=STAMPS_LISTED)
    out = tmp_path_factory.mktemp("stamps") / "indexes" / "stamps"
    build_images(corpus, out, BuildConfig(probe=ProbeConfig(lbfgs_steps=100), ranker_queries=40),
                 corpus_name="pkg:stamps")
    return out, corpus.sources
