"""`t2ray` command line: one entry per job; jobs/*.py run these same commands.

Errors a user can cause (an unknown task, a missing path, a wrong artifact, a bad option value)
end with one line that names the problem and exit code 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="t2ray: self-adaptive LLMs (SVF experts, Text-to-LoRA) on Ray.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
tasks_app = typer.Typer(help="The task suite: list, sample, reference checks.", no_args_is_help=True)
base_app = typer.Typer(help="Base models: info, evaluation, the tiny model's pretraining recipe.",
                       no_args_is_help=True)
svf_app = typer.Typer(help="SVF: parameter counts, SVD caches, expert info, transfer.",
                      no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")
app.add_typer(base_app, name="base")
lora_app = typer.Typer(help="The LoRA baseline trained with the same loop.", no_args_is_help=True)
t2l_app = typer.Typer(help="Text-to-LoRA: the hypernetwork.", no_args_is_help=True)
app.add_typer(svf_app, name="svf")
app.add_typer(lora_app, name="lora")
app.add_typer(t2l_app, name="t2l")
results_app = typer.Typer(help="The results tables: train what each compares, score it on the "
                          "test split, write docs/results.json.", no_args_is_help=True)
app.add_typer(results_app, name="results")
serve_app = typer.Typer(help="Serving: the kit the packaged graph serves (run the graph itself "
                        "with `serve run serve_config.yaml`).", no_args_is_help=True)
app.add_typer(serve_app, name="serve")
console = Console()
# What a user can get wrong; anything else is a bug and keeps its traceback.
USER_ERRORS = (FileNotFoundError, NotADirectoryError, KeyError, ValueError)


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="Show the traceback of an error.")):
    """t2ray: self-adaptive LLMs (SVF experts, Text-to-LoRA) on Ray."""  # --debug: see main()


def main(argv: list[str] | None = None, job: bool = False) -> None:
    """The `t2ray` entry point, and with `job=True` the one every script in jobs/ calls."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    try:
        if job:
            _run_job(args)
        else:
            app(args=args, prog_name="t2ray")
    except USER_ERRORS as e:
        if debug:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        Console(stderr=True).print(f"[bold red]error:[/bold red] {message}", highlight=False,
                                   markup=True, soft_wrap=True)
        Console(stderr=True).print("[dim](run with --debug for the traceback)[/dim]")
        raise SystemExit(2) from None


def _run_job(args: list[str]) -> None:
    """A command run as a job (t2ray.job): `--config YAML` gives the options of a command that
    has no typed config of its own, relative outputs are made safe for `ray job submit`, and the
    resolved options are printed and written beside the outputs before the work starts."""
    from t2ray.job import option_defaults, record, resolve_outputs

    group = typer.main.get_command(app)
    command, path, rest = group, [], list(args)
    while hasattr(command, "commands") and rest and rest[0] in command.commands:
        path.append(rest.pop(0))
        command = command.commands[path[-1]]
    if hasattr(command, "commands"):
        raise ValueError(f"a job names one command, got {' '.join(args)!r}")
    default_map: dict = {}
    own_config = any(p.name == "config" for p in command.params)
    config_at = [i for i, a in enumerate(rest) if a == "--config" or a.startswith("--config=")]
    if config_at and not own_config:
        i = config_at[-1]
        value = rest[i].split("=", 1)[1] if "=" in rest[i] else rest[i + 1]
        del rest[i:i + (1 if "=" in rest[i] else 2)]
        default_map = option_defaults(command, Path(value))
        for name in reversed(path):
            default_map = {name: default_map}
    work = command.callback

    def announced(**params):
        params = resolve_outputs(params)
        record(" ".join(path), params)
        return work(**params)

    command.callback = announced
    group.main(args=[*path, *rest], prog_name="t2ray", default_map=default_map)


def _split_names(names: str) -> list[str]:
    return [n.strip() for n in names.split(",") if n.strip()]


@tasks_app.command("list")
def tasks_list(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    group: Optional[str] = typer.Option(None, help="core, instruct or route."),
    suite: Optional[str] = typer.Option(None, help="v1 or v2 (default: the bundled base's)."),
):
    """All tasks with their family, split sizes, distinct contents per split and descriptions."""
    from t2ray.tasks import list_tasks

    rows = [{"name": t.name, "family": t.family, "group": t.group, "kind": t.kind,
             "seen": t.seen, "split_sizes": t.split_sizes,
             "distinct": {s: len(set(t.content_keys(s))) for s in t.split_sizes},
             "n_descriptions": len(t.descriptions) + len(t.probe_descriptions),
             "n_probe_descriptions": len(t.probe_descriptions), "tag": t.tag,
             "cell": list(t.cell) if t.cell else None}
            for t in list_tasks(group, suite)]
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    table = Table("name", "family", "group", "kind", "seen", "train/val/test", "distinct",
                  "descriptions")
    for r in rows:
        s, d = r["split_sizes"], r["distinct"]
        table.add_row(r["name"], r["family"], r["group"], r["kind"], str(r["seen"]),
                      f"{s['train']}/{s['validation']}/{s['test']}",
                      f"{d['train']}/{d['validation']}/{d['test']}", str(r["n_descriptions"]))
    console.print(table)


@tasks_app.command("sample")
def tasks_sample(
    name: str,
    n: int = typer.Option(3, "-n", help="How many examples."),
    split: str = typer.Option("test", help="train, validation or test."),
    as_json: bool = typer.Option(False, "--json"),
):
    """Show examples of a task split."""
    from t2ray.tasks import get_task

    examples = get_task(name).examples(split, n)
    if as_json:
        typer.echo(json.dumps([{"task": e.task, "uid": e.uid, "prompt": e.prompt,
                                "answer": e.answer, "solution": e.solution} for e in examples],
                              indent=1))
        return
    for e in examples:
        console.rule(f"{e.task} {e.uid}")
        console.print(f"[bold]prompt[/bold]\n{e.prompt}\n[bold]solution[/bold]\n{e.solution}",
                      markup=True, highlight=False)


@tasks_app.command("eval-reference")
def tasks_eval_reference(dataset: str = typer.Argument(..., help="humaneval")):
    """Run a real data set's reference solutions through the code sandbox."""
    if dataset != "humaneval":
        raise typer.BadParameter(f"no reference check for {dataset!r}; available: humaneval")
    from t2ray.tasks.loaders import eval_reference_humaneval

    passed, total = eval_reference_humaneval()
    typer.echo(f"passed {passed}/{total}")
    if passed != total:
        raise typer.Exit(1)


@base_app.command("info")
def base_info(
    model: str = typer.Option("tiny", help="Model name (tiny), local path or hub id."),
    as_json: bool = typer.Option(False, "--json"),
):
    """Parameter count, bytes on disk, architecture and weights fingerprint."""
    from t2ray.models import base_model_info

    _print_mapping(base_model_info(model), as_json)


@base_app.command("eval")
def base_eval(
    tasks: str = typer.Option("math,code,reasoning,math-hard,code-hard,reasoning-hard",
                              help="Comma-separated task names."),
    split: str = typer.Option("test"),
    model: str = typer.Option("tiny"),
    n: Optional[int] = typer.Option(None, help="Items per task (default: the whole split)."),
    as_json: bool = typer.Option(False, "--json"),
    out: Optional[Path] = typer.Option(None, help="Also write the rows to this JSON file."),
    results: Optional[Path] = typer.Option(
        None, help="Merge the rows into a results.json (table `base`, method `base`)."),
    engine: str = typer.Option("hf", help="hf (in this process) or vllm (an engine actor)."),
    suite: Optional[str] = typer.Option(None, help="v1 or v2 (default: the bundled base's)."),
    instruct: bool = typer.Option(False, help="Also every instruction family of the suite (v2: "
                                  "bare, with a description and with its tag)."),
    table: str = typer.Option("base", help="The results.json table of the rows."),
    prefill: str = typer.Option("", help="Force every answer to start with this text (e.g. "
                                "'A=' for v2 reasoning's worked form, 'The answer is ' for the "
                                "bare one)."),
):
    """Greedy accuracy of a base model per task, with 95% confidence intervals."""

    from t2ray.eval.results import (
        ResultRow,
        invocation,
        merge_results,
        print_accuracy_table,
        verdict_entry,
        write_verdicts,
    )
    from t2ray.experiments.base import evaluate_base
    from t2ray.tasks import list_tasks

    if engine == "vllm":
        from t2ray.distributed.ray_env import ensure_ray

        ensure_ray()
    names = _split_names(tasks) + ([t.name for t in list_tasks("instruct", suite)]
                                   if instruct else [])
    pairs = evaluate_base(model, names, split, n, progress=not as_json, engine=engine,
                          suite=suite, prefill=prefill)
    rows = [r if m == "base" else replace(r, task=f"{r.task} ({m})") for m, r in pairs]
    if results:  # the rows, and beside them the per-item verdicts behind them
        command = invocation()
        merge_results(results, [ResultRow.from_eval(r, table, m, command) for m, r in pairs])
        write_verdicts(results.parent / "scores" / f"{table}.jsonl.gz", table,
                       [verdict_entry(r.task, m, r.split, r.item_correct) for m, r in pairs],
                       command)
    payload = [{**r.as_dict(), "method": m} for m, r in pairs]
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=1))
    if as_json:
        typer.echo(json.dumps(payload, indent=1))
    else:
        print_accuracy_table(rows, title=f"{model} greedy accuracy ({split})")


@base_app.command("pretrain")
def base_pretrain(
    out: Path = typer.Option(..., help="Output directory (model/, metrics.jsonl, loss.png)."),
    config: Optional[Path] = typer.Option(None, help="YAML with PretrainConfig fields."),
    steps: Optional[int] = typer.Option(None, help="Override the number of steps."),
    install: bool = typer.Option(False, help="Copy the result into the package as `tiny`."),
    device: Optional[str] = typer.Option(None, help="cpu (the recipe's reference) or cuda."),
):
    """The recipe that builds the bundled tiny base model (deterministic on CPU, about an hour
    on 2 cores; minutes with --device cuda)."""
    from t2ray.experiments.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig.from_yaml(config) if config else PretrainConfig()
    cfg.out = str(out)
    if steps is not None:
        cfg.steps = steps
    if device is not None:
        cfg.device = device
    pretrain(cfg, install=install)


def _print_mapping(info: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(info, indent=1))
        return
    table = Table("field", "value")
    for k, v in info.items():
        table.add_row(k, str(v))
    console.print(table)


@svf_app.command("params")
def svf_params(
    config: Path = typer.Option(..., help="A Hugging Face config.json."),
    targets: str = typer.Option("mlp", help="mlp, attn, all or module names."),
    as_json: bool = typer.Option(False, "--json"),
):
    """Expert-vector and LoRA parameter counts from a model config alone."""
    from t2ray.svf.ops import params_from_config

    _print_mapping(params_from_config(config, targets), as_json)


@svf_app.command("decompose")
def svf_decompose(
    model: str = typer.Option("tiny", help="Model name (tiny), local path or hub id."),
    targets: str = typer.Option("mlp", help="mlp, attn, all or module names."),
    out: Optional[Path] = typer.Option(None, help="Cache directory."),
    use_ray: Optional[bool] = typer.Option(None, "--ray/--no-ray",
                                           help="Parallel Ray tasks (default: if Ray is up)."),
):
    """SVD of every target matrix into a resumable, fingerprinted cache."""
    from t2ray.svf.ops import decompose_model

    cache = decompose_model(model, targets, out, use_ray)
    console.print(f"SVD cache at {cache.root}: {len(cache.matrices)} matrices, "
                  f"max reconstruction error {cache.manifest['max_recon_error']:.2e}")


@svf_app.command("info")
def svf_info(path: Path, as_json: bool = typer.Option(False, "--json")):
    """Targets, parameter count, fingerprint and metrics of an expert or an SVD cache."""
    from t2ray.svf.ops import describe

    _print_mapping(describe(path), as_json)


@svf_app.command("transfer")
def svf_transfer(
    expert: Path,
    to: str = typer.Option(..., "--to", help="Target model (same matrix shapes)."),
    out: Path = typer.Option(...),
    shuffle: bool = typer.Option(False, help="Permute components (the paper's ablation)."),
    cache: Optional[Path] = typer.Option(None, help="SVD cache directory of the target model."),
):
    """Apply an expert trained on one model to another model of the same shapes."""
    from t2ray.svf.ops import transfer_to_model

    moved = transfer_to_model(expert, to, out, shuffle, cache)
    console.print(f"wrote {out} for base {moved.base_fingerprint} ({moved.num_params} params)")


def _configured(cls, path: Optional[Path], **options):
    """A typed config from its YAML (or the defaults) with every option a user gave on top."""
    cfg = cls.from_yaml(path) if path else cls()
    for name, value in options.items():
        if value is not None:
            setattr(cfg, name, value)
    return cfg


def _check(cfg) -> None:
    """A typed config's own checks, as a usage error of the command that built it."""
    try:
        cfg.validate()
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e


def _train_command(policy: str, doc: str):
    """`t2ray svf train` and `t2ray lora train`: the same options, one training function."""

    def command(
        out: Path = typer.Option(...),
        config: Optional[Path] = typer.Option(None, help="YAML with TrainConfig fields; the "
                                              "options below override it."),
        model: Optional[str] = typer.Option(None, help="[default: tiny]"),
        task: Optional[str] = typer.Option(None, help="[default: math]"),
        workers: int = typer.Option(2, help="Ray Train workers (0: in this process)."),
        deepspeed_stage: Optional[int] = typer.Option(None, help="ZeRO stage 0-3 (default: "
                                                      "none)."),
        objective: Optional[str] = typer.Option(None, help="rl (REINFORCE + KL, the default) "
                                                "or sft."),
        policy_name: str = typer.Option(policy, "--policy", help="svf or lora."),
        engine: Optional[str] = typer.Option(None, help="Rollout engine: hf or vllm."),
        steps: Optional[int] = typer.Option(None), kl_coef: Optional[float] = typer.Option(None),
        seed: Optional[int] = typer.Option(None),
        max_failures: int = typer.Option(1, help="Worker failures to recover from."),
        device: Optional[str] = typer.Option(None, help="cpu (the default) or cuda: each "
                                             "worker's GPU (not yet run on one)."),
    ):
        from t2ray.rl.launch import train
        from t2ray.rl.trainer import TrainConfig

        cfg = _configured(TrainConfig, config, policy=policy_name, model=model, task=task,
                          objective=objective, deepspeed_stage=deepspeed_stage, engine=engine,
                          steps=steps, kl_coef=kl_coef, seed=seed, device=device)
        cfg.out = str(out)
        train(cfg, workers=workers, max_failures=max_failures)

    command.__doc__ = doc
    return command


svf_app.command("train")(_train_command(
    "svf", "Train an SVF expert with REINFORCE (or SFT) on Ray Train (+ DeepSpeed)."))
lora_app.command("train")(_train_command(
    "lora", "Train the LoRA baseline (q, v; rank 16, alpha 32) with the same loop."))


@t2l_app.command("params")
def t2l_params(
    config: Path = typer.Option(..., help="A Hugging Face config.json (no weights needed)."),
    variant: str = typer.Option("L", help="L, M or S."),
    rank: int = typer.Option(8), targets: str = typer.Option("q_proj,v_proj"),
    encoder_dim: int = typer.Option(1024), latent: int = typer.Option(128),
    head_in: int = typer.Option(512),
    as_json: bool = typer.Option(False, "--json"),
):
    """Trainable parameters of a T2L hypernetwork for a model's shapes (from its config alone)."""
    import torch

    from t2ray.t2l.hypernet import HyperConfig, HyperLoRA, count_trainable, lora_targets

    n_layers, modules = lora_targets(json.loads(config.read_text()), _split_names(targets))
    cfg = HyperConfig(variant, n_layers, modules, rank=rank, encoder_dim=encoder_dim,
                      latent=latent, head_in=head_in)
    with torch.device("meta"):  # counts without allocating the weights
        net = HyperLoRA(cfg)
    heads = sum(p.numel() for p in net.heads.parameters())
    info = {"trainable": count_trainable(net), "heads": heads,
            "trunk": count_trainable(net) - heads, "variant": variant, "rank": rank,
            "n_layers": n_layers, "modules": {k: list(v) for k, v in modules.items()}}
    _print_mapping(info, as_json)


@t2l_app.command("generate")
def t2l_generate(
    checkpoint: Path = typer.Argument(..., help="A T2L checkpoint directory."),
    description: str = typer.Argument(..., help="The task, in natural language."),
    out: Path = typer.Option(..., help="PEFT adapter directory to write."),
):
    """Write the LoRA a description asks for as a PEFT adapter (scale written explicitly)."""
    import time

    from t2ray.lora.peft_io import export_peft
    from t2ray.t2l.encoder import check_description, load_encoder
    from t2ray.t2l.generate import T2LCheckpoint

    try:
        check_description(description)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    ckpt = T2LCheckpoint.load(checkpoint)
    encoder = load_encoder(ckpt.encoder)
    t0 = time.perf_counter()
    lora = ckpt.generate(encoder, [description])[0]
    seconds = time.perf_counter() - t0
    export_peft(lora, out, base_model=ckpt.base_model, base_fingerprint=ckpt.base_fingerprint)
    console.print(f"wrote {out}: rank {lora.rank}, scale {lora.scale:.4g}, {len(lora.a)} modules, "
                  f"{lora.num_params:,} params, generated in {1000 * seconds:.0f} ms")


@t2l_app.command("train")
def t2l_train(
    out: Path = typer.Option(..., help="Run directory (checkpoint/, metrics.jsonl, curve)."),
    variant: Optional[str] = typer.Option(None, help="L, M (the default) or S."),
    objective: Optional[str] = typer.Option(None, help="sft (through the base model, the "
                                            "default) or recon."),
    library: Optional[Path] = typer.Option(None, help="recon: directory of per-task LoRAs."),
    model: Optional[str] = typer.Option(None, help="[default: tiny]"),
    config: Optional[Path] = typer.Option(None, help="YAML with T2LTrainConfig fields; the "
                                          "options here override it."),
    steps: Optional[int] = typer.Option(None),
    workers: int = typer.Option(0, help="Ray Train workers (0: in this process)."),
    deepspeed_stage: Optional[int] = typer.Option(None, help="ZeRO stage (default: none)."),
    seed: Optional[int] = typer.Option(None, help="[default: 0]"),
    max_failures: int = typer.Option(1, help="Worker failures to recover from."),
    device: Optional[str] = typer.Option(None, help="cpu (the default) or cuda: each worker's "
                                         "GPU (not yet run on one)."),
):
    """Train the T2L hypernetwork on the seen instruction families."""
    from t2ray.t2l.train import T2LTrainConfig, train_t2l

    cfg = _configured(T2LTrainConfig, config, variant=variant, objective=objective, model=model,
                      seed=seed, deepspeed_stage=deepspeed_stage, steps=steps, device=device,
                      library=str(library) if library else None)
    cfg.out = str(out)
    _check(cfg)
    train_t2l(cfg, workers=workers, max_failures=max_failures)


@app.command("plan")
def plan(
    config: Path = typer.Option(..., help="A Hugging Face config.json (no weights needed)."),
    gpus: int = typer.Option(..., help="GPUs the training job runs on (data-parallel ranks)."),
    gpu_mem: float = typer.Option(80.0, help="Memory of one GPU in GB."),
    targets: str = typer.Option("mlp", help="SVF targets: mlp, attn, all or module names."),
    tp: int = typer.Option(1, help="The vLLM engine's tensor-parallel size."),
    zero: Optional[int] = typer.Option(None, min=0, max=3,
                                       help="One ZeRO stage (default: all four)."),
    dtype: str = typer.Option("bf16", help="bf16, fp16 or fp32 for weights and factors."),
    max_len: int = typer.Option(4096, help="A sequence length the engine's KV cache must hold."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as one JSON object."),
):
    """Per-GPU memory of SVF training (each ZeRO stage) and of its vLLM engine, from a config."""
    from t2ray.distributed.plan import ZERO_STAGES, PlanRequest, memory_plan

    request = PlanRequest(gpus=gpus, gpu_mem_gb=gpu_mem, targets=targets, tp=tp, dtype=dtype,
                          zero=ZERO_STAGES if zero is None else (zero,), max_len=max_len)
    result = memory_plan(json.loads(config.read_text()), request)
    if as_json:
        typer.echo(json.dumps(result, indent=1))
        return
    gb = lambda b: f"{b / 1e9:,.2f}"  # noqa: E731
    console.print(f"{config}: {result['model_type']}, {result['num_hidden_layers']} layers, "
                  f"{result['base_values'] / 1e9:.2f} G parameters ({gb(result['base_weight_bytes'])}"
                  f" GB {dtype}); {result['target_matrices']} SVF targets ({targets}): factors "
                  f"{result['svd_factor_values'] / 1e9:.2f} G values = "
                  f"{gb(result['svd_factor_bytes'])} GB ({result['factor_to_target_weights']:.2f}x "
                  f"the target weights), z {result['z_values']:,} values = "
                  f"{result['z_bytes'] / 1e6:.2f} MB fp32")
    table = Table("per GPU (GB)", *result["training"],
                  title=f"SVF training on {gpus} x {gpu_mem:g} GB")
    rows = [("base weights", "base_weights"), ("SVD factors (today)", "svd_factors"),
            ("SVD factors (partitioned)", "svd_factors_partitioned"), ("z", "z"),
            ("gradients", "gradients"), ("Adam moments", "optimizer"),
            ("total (today)", "total"), ("total (factors partitioned)",
                                         "total_factors_partitioned")]
    for label, key in rows:
        table.add_row(label, *(gb(stage[key]) for stage in result["training"].values()))
    for label, key in (("fits (today)", "fits"), ("fits (partitioned)",
                                                   "fits_factors_partitioned")):
        table.add_row(label, *("yes" if s[key] else "NO" for s in result["training"].values()))
    console.print(table)
    engine = result["engine"]
    console.print(f"vLLM engine, TP={tp}, per rank: weights {gb(engine['base_weights'])} GB, "
                  f"factor slices {gb(engine['svd_factor_slices'])} GB "
                  f"({100 * engine['svd_factor_share']:.0f}% of the factors), KV cache "
                  f"{gb(engine['kv_cache'])} GB = {engine['kv_cache_tokens']:,} tokens: "
                  + ("fits" if engine["fits"] else f"does NOT fit one {max_len}-token sequence"))
    console.print(f"ZeRO-3 with partitioned factors fits from "
                  f"{result['min_gpus_zero3_factors_partitioned']} GPUs.")
    for note in result["notes"]:
        console.print(f"[dim]{note}[/dim]")


@app.command("scaling")
def scaling(
    out: Path = typer.Option(Path("runs/scaling"), help="One run directory per point, and "
                             "scaling.json / .md / .png."),
    config: Optional[Path] = typer.Option(None, help="YAML with ScalingConfig fields; the "
                                          "options below override it."),
    recipes: Optional[str] = typer.Option(None, help="svf-rl,t2l-sft (the default: both)."),
    workers: Optional[str] = typer.Option(None, help="Worker counts, e.g. 1,2,4 [default: 1,2]"),
    zero: Optional[str] = typer.Option(None, help="ZeRO stages, `none` for plain all-reduce "
                                       "[default: none,2,3]."),
    steps: Optional[int] = typer.Option(None, help="Steps per run [default: 6]."),
    model: Optional[str] = typer.Option(None, help="[default: tiny]"),
    device: Optional[str] = typer.Option(None, help="cpu (the default) or cuda: one GPU per "
                                         "worker (not yet run on one)."),
    doc: Optional[Path] = typer.Option(None, help="Also write the table and plot into this "
                                       "markdown file's `scaling-runs` section "
                                       "(docs/scaling.md)."),
):
    """Short SVF-RL and T2L training runs at 1..N workers and ZeRO stages: per-step metrics on
    the dashboard while they run, then a table and a plot of throughput and efficiency."""
    from t2ray.experiments.scaling import ScalingConfig, run_scaling

    cfg = _configured(ScalingConfig, config, model=model, steps=steps, device=device,
                      recipes=_split_names(recipes) if recipes else None,
                      workers=_int_list(workers) if workers else None,
                      zero=_zero_list(zero) if zero else None)
    cfg.out = str(out)
    _check(cfg)
    run_scaling(cfg, doc)


@app.command("eval")
def eval_strategies(
    experts: Path = typer.Option(..., help="Expert library: <category>/ folders (math, code, "
                                 "reasoning; route for the classifier), or one per seed<k>/."),
    model: str = typer.Option("tiny"),
    tasks: str = typer.Option("math-hard,code-hard,reasoning-hard"),
    strategy: str = typer.Option("none,prompt,classifier,fewshot",
                                 help="Comma list of none|expert|oracle-expert|lora|prompt|"
                                 "classifier|fewshot."),
    seeds: int = typer.Option(1, help="Seeds 0..N-1 (expert libraries and CEM seeds)."),
    n_test: Optional[int] = typer.Option(None, help="Test items per task (default: all)."),
    shots: int = typer.Option(20, help="Validation items CEM scores each member on."),
    select: int = typer.Option(100, help="The next validation items, which choose among the "
                               "anchors (base, each expert, uniform) and the incumbents."),
    generations: int = typer.Option(10),
    population: int = typer.Option(32), concurrency: int = typer.Option(2),
    per_matrix: bool = typer.Option(False, help="One alpha per expert x matrix."),
    per_layer: bool = typer.Option(False, help="One alpha per expert x decoder layer."),
    mix_space: str = typer.Option("z", help="z (sigmoid of the mixed z) or mask (the "
                                  "reference's linear mix of the multipliers)."),
    searcher: str = typer.Option("cem", help="cem, optuna-cmaes or nevergrad."),
    engine: str = typer.Option("hf", help="hf or vllm: the second pass and the few-shot "
                               "members' engines."),
    out: Path = typer.Option(Path("runs/eval")),
    results: Optional[Path] = typer.Option(None, help="Merge the rows into this results.json."),
):
    """Accuracy per adaptation strategy and task: table, JSON, markdown and the alpha plot."""
    from t2ray.adapt.fewshot import FewShotConfig
    from t2ray.distributed.ray_env import ensure_ray
    from t2ray.experiments.unseen import check_strategies, run_eval
    from t2ray.svf.ops import decompose_model

    check_strategies(_split_names(strategy))

    fewshot = FewShotConfig(shots=shots, select=select, generations=generations,
                            population=population,
                            concurrency=concurrency, per_matrix=per_matrix, per_layer=per_layer,
                            searcher=searcher,
                            engine=engine, mix_space=mix_space)
    cache = decompose_model(model, "mlp")
    if "fewshot" in _split_names(strategy) or engine == "vllm":
        ensure_ray(num_cpus=max(2, concurrency))
    run_eval(model, experts, _split_names(tasks), _split_names(strategy), list(range(seeds)),
             out, str(cache.root), n_test, fewshot, results_json=results, engine=engine)


@app.command("demo")
def demo(
    preset: str = typer.Option("default", help="default (under 20 min on 2 cores) or smoke."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default runs/<timestamp>)."),
    base_only: bool = typer.Option(False, help="Only the base model's table over all families."),
    n: Optional[int] = typer.Option(None, help="Items per task for --base-only (default: all)."),
):
    """The whole pipeline on the bundled model: experts, LoRA, seen and unseen tables."""
    if base_only:
        from t2ray.experiments.base import run_demo

        run_demo(n=n, out=out)
        return
    from t2ray.experiments.demo import PRESETS, run_pipeline

    if preset not in PRESETS:
        raise typer.BadParameter(f"preset must be one of {sorted(PRESETS)}")
    run_pipeline(out=out, preset=preset)
    _live_requests()


def _live_requests() -> None:
    """The demo's last step: the serving graph (packaged kit) on a free loopback port, one real
    request per strategy, then everything it started is stopped."""
    from t2ray.serve.local import demo_requests, serve_locally

    console.print("[bold]serving[/bold]: the two-stage graph on loopback, one request per "
                  "strategy (`serve run serve_config.yaml` runs it as a service)")
    with serve_locally() as url:
        rows = demo_requests(url)
    # plain lines, never wrapped: each request as a person would read it in a log
    console.print(f"live requests to {url}/v1/chat/completions:", soft_wrap=True)
    for r in rows:
        seconds = f"{r['seconds']:.2f} s" if r["seconds"] else ""
        console.print(f"  adaptation {r['adaptation']}  |  question {r['question'][:50]!r}  |  "
                      f"answer {r['answer'][:50]!r}  |  served by {r['served_by']}  {seconds}",
                      soft_wrap=True, markup=False, highlight=False)
    if any(r["status"] != 200 for r in rows):
        raise RuntimeError(f"a live request failed: {[r for r in rows if r['status'] != 200]}")


@serve_app.command("kit")
def serve_kit(
    out: Optional[Path] = typer.Option(None, help="Kit directory (default: the packaged kit, "
                                       "t2ray/serve/kit)."),
    preset: str = typer.Option("default", help="The demo preset whose artifacts it holds."),
    fewshot_task: str = typer.Option("math-hard", help="The task of its few-shot profile."),
):
    """Build the serving kit of the bundled model from the demo's artifacts (trained when
    missing): the experts, the classifier, a LoRA per family, the T2L checkpoint and a few-shot
    profile, checked against the base fingerprint; its manifest records this command."""
    from t2ray.distributed.ray_env import ensure_ray
    from t2ray.eval.results import invocation
    from t2ray.experiments.demo import PRESETS, kit_sources
    from t2ray.serve.library import KIT_DIR, assemble_kit

    if preset not in PRESETS:
        raise typer.BadParameter(f"preset must be one of {sorted(PRESETS)}")
    command = invocation()
    ensure_ray(num_cpus=2)
    manifest = assemble_kit(out or KIT_DIR, command=command,
                            **kit_sources(preset=preset, fewshot_task=fewshot_task))
    console.print(f"serving kit -> {out or KIT_DIR}: {manifest['total_bytes'] / 1e6:.2f} MB")
    _print_mapping(manifest["bytes"], as_json=False)


@serve_app.command("calibrate")
def serve_calibrate(
    library: Path = typer.Argument(..., help="A serving library (or kit) directory."),
    model: str = typer.Option("tiny", help="The base model it serves (a path or hub id)."),
    n: int = typer.Option(200, help="Routing-task validation items."),
):
    """Choose each router's abstention threshold on the routing task's validation split (the
    `prompt` router, and the `classifier` router when the library holds its expert) and keep
    them in LIBRARY/routing.json, where the served routers read them."""
    from t2ray.adapt.router import calibrate_routers
    from t2ray.engines.hf import HFEngine
    from t2ray.eval.results import invocation
    from t2ray.models import load_model
    from t2ray.serve.library import CLASSIFIER, ServingLibrary, write_routing
    from t2ray.svf.ops import decompose_model

    cache = decompose_model(model, "mlp")
    lib = ServingLibrary.open(library, cache.fingerprint)
    base, tok = load_model(model)
    engine = HFEngine(base, tok, svd_cache=cache, name=model)
    routing = calibrate_routers(engine, lib.experts.get(CLASSIFIER), n)
    write_routing(library, cache.fingerprint, routing, invocation())
    _print_mapping({f"{name} {k}": v for name, r in routing.items() for k, v in r.items()},
                   as_json=False)


@results_app.command("base")
def results_base(
    table: str = typer.Option("base-v2", help="The base-model table (`t2ray base eval "
                              "--instruct --results ... --table T`)."),
    oracle: Optional[str] = typer.Option("t2l-v2", help="The table holding the oracle "
                                         "task-lora rows (`t2ray results t2l`), if any."),
    results: Path = typer.Option(Path("docs/results.json")),
):
    """A base model's rows of a results.json as markdown: the core families with their
    intervals and the instruction grid (bare, with a description, with its tag, oracle)."""
    from t2ray.experiments.base import base_tables

    if not results.exists():
        raise typer.BadParameter(f"no results file at {results}")
    rows = json.loads(results.read_text())
    if not any(r["table"] == table for r in rows):
        raise typer.BadParameter(f"{results} holds no rows of table {table!r}")
    typer.echo(base_tables(rows, table, oracle), nl=False)


@results_app.command("seen")
def results_seen(
    config: Optional[Path] = typer.Option(
        None, help="YAML: TrainConfig fields for every run, `methods:` per-method overrides "
        "(methods: {lora-rl: {lr: 0.001}}) and `tasks:` per-task ones "
        "(tasks: {reasoning: {svf-rl: {lr: 0.005}}})."),
    model: str = typer.Option("tiny"), tasks: str = typer.Option("math,code,reasoning"),
    seeds: str = typer.Option("0,1,2"),
    methods: str = typer.Option("svf-rl,svf-sft,lora-rl,lora-sft"),
    steps: Optional[int] = typer.Option(None), workers: int = typer.Option(0),
    n_test: Optional[int] = typer.Option(None, help="Test items per task (default: all)."),
    out: Path = typer.Option(Path("runs/seen")),
    results: Path = typer.Option(Path("docs/results.json")),
    table: str = typer.Option("seen-v2", help="The results.json table of the rows."),
):
    """The seen-task table: base / LoRA-RL / LoRA-SFT / SVF-RL / SVF-SFT per task and seed."""
    from t2ray.experiments.seen import seen_table, sweep_config
    from t2ray.svf.ops import decompose_model

    cfg, overrides, task_overrides = sweep_config(config, model, steps)
    cfg.svd_cache = str(decompose_model(cfg.model, "mlp").root)
    seen_table(cfg, _split_names(tasks), _int_list(seeds), _split_names(methods), out,
               workers=workers, n_test=n_test, results_json=results,
               method_overrides=overrides, task_overrides=task_overrides, table=table)


@results_app.command("tune")
def results_tune(
    config: Path = typer.Option(..., help="The sweep's YAML (configs/seen.yaml)."),
    task: str = typer.Option(...), method: str = typer.Option(...),
    grid: list[str] = typer.Option(..., help="FIELD=v1,v2,... (repeat for a product grid)."),
    eval_n: int = typer.Option(200, help="Validation items per reading."),
    out: Path = typer.Option(Path("runs/tune")),
):
    """Choose a method's settings for the seen table on the validation split only (seed 0)."""
    from t2ray.experiments.seen import parse_grid, sweep_config, tune_on_validation
    from t2ray.svf.ops import decompose_model

    cfg, _, _ = sweep_config(config, method=method, eval_n=eval_n)
    cfg.svd_cache = str(decompose_model(cfg.model, "mlp").root)
    tune_on_validation(cfg, task, method, parse_grid(cfg, grid), out)


@results_app.command("unseen")
def results_unseen(
    config: Path = typer.Option(..., help="The seen sweep's YAML (configs/seen.yaml)."),
    seen: Path = typer.Option(Path("runs/seen"), help="The seen sweep's output directory."),
    model: str = typer.Option("tiny"), seeds: str = typer.Option("0,1,2"),
    strategies: str = typer.Option("none,lora,prompt,classifier,fewshot"),
    n_test: Optional[int] = typer.Option(None, help="Test items per family (default: all)."),
    population: int = typer.Option(32), generations: int = typer.Option(10),
    concurrency: int = typer.Option(2),
    per_matrix: bool = typer.Option(False, help="One alpha per expert x matrix."),
    per_layer: bool = typer.Option(False, help="One alpha per expert x decoder layer."),
    mix_space: str = typer.Option("z", help="z (sigmoid of the mixed z) or mask (the "
                                  "reference's linear mix of the multipliers)."),
    searcher: str = typer.Option("cem", help="cem, optuna-cmaes or nevergrad."),
    out: Path = typer.Option(Path("runs/unseen"), help="Route experts and libraries."),
    tables: Optional[Path] = typer.Option(None, help="Scores, tables, plots (default: --out)."),
    results: Path = typer.Option(Path("docs/results.json")),
    table: str = typer.Option("unseen-v2", help="The results.json table of the rows."),
):
    """The unseen-family table: base / LoRA-RL / prompt / classifier / few-shot per seed."""
    from t2ray.adapt.fewshot import FewShotConfig
    from t2ray.experiments.unseen import unseen_table

    fewshot = FewShotConfig(population=population, generations=generations,
                            concurrency=concurrency, per_matrix=per_matrix, per_layer=per_layer,
                            searcher=searcher,
                            mix_space=mix_space)
    unseen_table(config, seen, out, model, _int_list(seeds), _split_names(strategies), n_test,
                 fewshot, tables, results, table)


@results_app.command("t2l")
def results_t2l(
    config: Optional[Path] = typer.Option(None, help="YAML with T2LTableConfig fields."),
    methods: Optional[str] = typer.Option(None, help="Comma list (default: every method)."),
    seeds: str = typer.Option("0,1,2"),
    n_test: Optional[int] = typer.Option(None, help="Test items per family (default: all)."),
    out: Path = typer.Option(Path("runs/t2l-table")),
    results: Path = typer.Option(Path("docs/results.json")),
    table: str = typer.Option("t2l", help="The results.json table of the rows."),
):
    """The T2L table on the held-out instruction families (resumes from --out)."""
    from t2ray.experiments.t2l import T2LTableConfig, all_methods, t2l_table

    cfg = T2LTableConfig.from_yaml(config) if config else T2LTableConfig()
    if n_test is not None:
        cfg.n_test = n_test
    t2l_table(cfg, out, _split_names(methods) if methods else all_methods(), _int_list(seeds),
              results_json=results, table_name=table)


@results_app.command("t2l-tune")
def results_t2l_tune(
    config: Path = typer.Option(..., help="YAML with T2LTableConfig fields (val_families)."),
    method: str = typer.Option("t2l-sft-M", help="A hypernetwork method of the T2L table."),
    grid: list[str] = typer.Option([], help="FIELD=v1,v2 over T2LTrainConfig (repeatable)."),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("runs/t2l-tune")),
    table_out: Path = typer.Option(Path("runs/t2l-table"),
                                   help="The table's --out (its LoRA library)."),
):
    """Choose the T2L recipe on validation families only (seen families left out of training)."""
    from t2ray.experiments.seen import parse_grid
    from t2ray.experiments.t2l import T2LTableConfig, tune_t2l
    from t2ray.t2l.train import T2LTrainConfig

    cfg = T2LTableConfig.from_yaml(config)
    cfg.validate()
    tune_t2l(cfg, method, parse_grid(T2LTrainConfig(), grid), out, table_out, seed)


def _int_list(values: str) -> list[int]:
    try:
        return [int(v) for v in _split_names(values)]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {values!r}") from None


def _zero_list(values: str) -> list[int | None]:
    return [None if v == "none" else _int_list(v)[0] for v in _split_names(values)]


if __name__ == "__main__":
    main()
