"""The application's arguments (`args:` of an application in serve_config.yaml) and limits."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from t2ray.engines.factory import ENGINES
from t2ray.serve.adaptation import Adaptation, parse_adaptation
from t2ray.t2l.encoder import MAX_DESCRIPTION_CHARS


@dataclass
class Limits:
    """Enforced at the ingress, before any model work."""

    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int | None = None  # None: the model's max_position_embeddings
    max_tokens: int = 256  # cap on a request's max_tokens (its default when it names none)
    max_mix_entries: int = 8
    max_description_chars: int = MAX_DESCRIPTION_CHARS


@dataclass
class ServeArgs:
    model: str = "tiny"  # local path, hub id or `tiny`
    served_model_name: str | None = None  # the `model` clients send (default: `model`)
    library: str | None = None  # None: the packaged serving kit (bundled tiny model only)
    svd_targets: str = "mlp"  # the matrices the library's experts rescale
    svd_cache: str | None = None  # None: decomposed at start-up (cached under runs/svd/)
    engine: str = "hf"  # second pass and router: `hf` (in the replica) or `vllm` (an actor)
    engine_options: dict = field(default_factory=dict)  # VLLMConfig fields for `vllm`
    default_adaptation: str = "prompt"  # when a request names none
    hot_models_per_replica: int | None = None  # multiplexed experts kept; None: 4 (hf), 1 (vllm)
    max_batch_size: int = 16  # requests per engine call, per @serve.batch method
    batch_wait_s: float = 0.02  # how long a batch waits to fill
    adapter_cache_size: int = 256  # generated adapters kept by the T2L generator
    torch_threads: int = 1  # per replica; Ray's num_cpus does not bound torch's own pool
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self):
        if isinstance(self.limits, dict):
            self.limits = Limits(**self.limits)
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, not {self.engine!r}")
        if self.hot_models_per_replica is None:
            self.hot_models_per_replica = 1 if self.engine == "vllm" else 4
        if self.engine == "vllm" and self.hot_models_per_replica != 1:
            raise ValueError("a vLLM engine holds one weight set: hot_models_per_replica must be "
                             "1 (switching experts is a z-sync)")
        self.default_adaptation_spec()  # refuse a bad default at start-up, not per request

    def default_adaptation_spec(self) -> Adaptation:
        return parse_adaptation(None, self.default_adaptation, self.limits.max_mix_entries)

    @property
    def name(self) -> str:
        return self.served_model_name or self.model

    @classmethod
    def from_args(cls, args: dict | None) -> "ServeArgs":
        args = dict(args or {})
        unknown = sorted(set(args) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown serve args {unknown}; known: "
                             f"{sorted(f.name for f in fields(cls))}")
        return cls(**args)

    def as_dict(self) -> dict:
        return asdict(self)
