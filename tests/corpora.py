"""Small real text sets shared by the tests (imported as a module; pytest puts tests/ on the path)."""

from __future__ import annotations

CJK_DOCS = [
    "长城是中国古代修建的军事防御工程，东西绵延上万里，被认为是世界上最伟大的建筑奇迹之一。",
    "熊猫主要生活在四川、陕西和甘肃的山区竹林里，每天要花十几个小时吃竹子。",
    "富士山は静岡県と山梨県にまたがる活火山で、標高三千七百七十六メートルの日本最高峰である。",
    "東京の地下鉄は毎日数百万人の乗客を運び、世界で最も混雑した交通網の一つとして知られている。",
]
"""Chinese and Japanese sentences (no spaces between words), not in any packaged corpus."""


def wiki_texts(n: int = 500) -> list[str]:
    """The first ``n`` Wikipedia summaries of ``pkg:wiki``."""
    from gif_core.data import wiki_samples

    return [s.text for s in wiki_samples()[:n]]
