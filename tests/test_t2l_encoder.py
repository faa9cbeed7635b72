"""The description encoder: offline MiniLM, normalised and scaled, paraphrases close, refusals."""

import math

import pytest
import torch

from t2ray.t2l.encoder import DescriptionEncoder
from t2ray.tasks import list_tasks


@pytest.fixture(scope="module")
def encoder():
    return DescriptionEncoder()


def test_embeddings_are_normalised_scaled_and_cached(encoder):
    emb = encoder.encode(["Reverse the words.", "Sort the list.", "Reverse the words."])
    assert emb.shape == (3, encoder.dim) == (3, 384)
    torch.testing.assert_close(emb.norm(dim=1), torch.full((3,), math.sqrt(384)))
    assert torch.equal(emb[0], emb[2]) and len(encoder._cache) >= 2


def test_paraphrases_land_closer_than_other_tasks(encoder):
    """Each instruction family's paraphrases are nearer to each other than to other families."""
    tasks = list_tasks("instruct")[:20]
    wins = 0
    for t in tasks:
        own = encoder.encode(t.descriptions)
        others = encoder.encode([d for o in tasks if o is not t for d in o.descriptions[:2]])
        within = (own[0] @ own[1:].T).mean()
        across = (own[0] @ others.T).mean()
        wins += bool(within > across)
    assert wins >= 18  # paraphrases are closer for (almost) every family


@pytest.mark.parametrize("bad", ["", "   ", "x" * 2001])
def test_empty_or_overlong_descriptions_are_refused(encoder, bad):
    with pytest.raises(ValueError, match="description"):
        encoder.encode([bad])
