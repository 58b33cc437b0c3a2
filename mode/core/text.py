"""Small text helpers shared by steps: NLTK's English stop-word list, shipped with the package (no download)."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

STOPWORDS_FILE = Path(__file__).parent / "stopwords_en.txt"
_WORD = re.compile(r"[a-z][a-z']+")


@lru_cache(maxsize=1)
def stopwords() -> frozenset[str]:
    """NLTK's English stop words (its classic 179-word list), lower case."""
    return frozenset(w for w in STOPWORDS_FILE.read_text().split() if w)


def content_words(text: str) -> list[str]:
    """Lower-case words of two or more letters that are not stop words, in order."""
    stop = stopwords()
    return [w for w in _WORD.findall(text.lower()) if w not in stop]
