"""Where the shared third-party corpus lives: $MILTER_CORPUS, beside the checkout,
or the workspace's shared folder. Tests that need it skip, saying so, when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent


def corpus_root() -> Path:
    """The corpus folder (holding INDEX.tsv and real/); may not exist."""
    candidates = [os.environ.get("MILTER_CORPUS", ""), str(_ROOT.parent / "shared" / "corpus"),
                  "/work/shared/corpus"]
    for c in candidates:
        if c and (Path(c) / "real").is_dir():
            return Path(c)
    return Path(candidates[1])


CORPUS = corpus_root()
