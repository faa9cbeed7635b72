"""The RL / SFT recipe in-process on a tiny random model: it runs, saves, and only z moves."""

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from t2ray.lora import import_peft
from t2ray.rl.trainer import TrainConfig, train_loop
from t2ray.svf import ExpertVector


def small(tmp_path, path, **kw):
    return dict(out=str(tmp_path / "out"), model=str(path), task="reasoning", steps=2,
                prompts_per_step=4, eval_every=2, eval_n=4, threads=1, **kw)


@pytest.mark.parametrize("objective", ["rl", "sft"])
def test_svf_training_saves_an_expert(tmp_path, tiny_random, objective):
    path, cache = tiny_random
    result = train_loop(small(tmp_path, path, svd_cache=str(cache.root), objective=objective,
                              lr=0.1, grad_clip=1.0, kl_coef=0.1, samples_per_prompt=2,
                              baseline="group" if objective == "rl" else "none"))
    assert [h["step"] for h in result["history"]] == [1, 2]
    assert "val_accuracy" in result["history"][-1]
    assert result["sync_bytes"] == 4 * sum(cache.ranks().values())
    expert = ExpertVector.load(tmp_path / "out" / "expert", expect_fingerprint=cache.fingerprint,
                               expect_ranks=cache.ranks())
    init = TrainConfig().parameterisation
    assert expert.param.kind == init and expert.task == "reasoning"
    assert (tmp_path / "out" / "reward_curve.png").stat().st_size > 1000
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2


def test_lora_baseline_exports_peft(tmp_path, tiny_random):
    """B trains; what is exported is the selected candidate: the zero adapter (candidate 0) if
    no validation beat the base, else the trained B."""
    path, _ = tiny_random
    result = train_loop(small(tmp_path, path, policy="lora", lora_rank=4, lora_alpha=8.0,
                              lr=0.05, grad_clip=1.0))
    assert all(h["grad_norm"] > 0 for h in result["history"])
    lora = import_peft(tmp_path / "out" / "lora")
    assert lora.rank == 4 and lora.scale == pytest.approx(2.0)
    shipped_zero = all(b.abs().sum() == 0 for b in lora.b.values())
    assert shipped_zero == (result["history"][-1]["best_step"] == 0)


def test_a_run_worse_than_base_at_every_step_ships_the_identity(tmp_path):
    """An lr that wrecks the bundled base at every step: the expert that ships is the identity
    (candidate 0, the base's own validation score), not the last or any trained step."""
    from t2ray.svf.ops import decompose_model

    cache = decompose_model("tiny", "mlp")
    result = train_loop(asdict(TrainConfig(
        out=str(tmp_path / "wrecked"), task="math", svd_cache=str(cache.root), objective="sft",
        steps=2, prompts_per_step=4, eval_every=1, eval_n=20, lr=20.0, grad_clip=1.0,
        threads=1)))
    expert = ExpertVector.load(tmp_path / "wrecked" / "expert")
    base = expert.metrics["base_val_accuracy"]
    assert base > 0 and all(h["val_accuracy"] < base for h in result["history"])
    assert expert.metrics["selected_step"] == 0 and expert.metrics["val_accuracy"] == base
    assert all(torch.equal(z, expert.param.identity(len(z))) for z in expert.z.values())


def test_selection_keeps_the_first_strictly_best_candidate(tmp_path):
    from t2ray.rl.trainer import Selection

    sel = Selection(tmp_path / "selection.pt", base_val_accuracy=0.3)
    for acc, step in ((0.3, 0), (0.2, 10), (0.5, 20), (0.5, 30), (0.4, 40)):
        sel.offer(acc, step, {"z": torch.full((2,), float(step))}, write=True)
    assert (sel.step, sel.val_accuracy) == (20, 0.5)  # a tie never replaces the incumbent
    again = Selection.load(tmp_path / "selection.pt")  # what a restarted worker reads
    assert again.summary() == sel.summary() and torch.equal(again.state["z"], sel.state["z"])


def test_bad_configs_are_refused(tmp_path, tiny_random):
    path, _ = tiny_random
    with pytest.raises(ValueError, match="needs svd_cache"):
        train_loop(small(tmp_path, path))
    with pytest.raises(ValueError, match="objective"):
        TrainConfig(objective="dpo", svd_cache="x").validate()
    with pytest.raises(ValueError, match="ZeRO-3 is supported for SVF policies only"):
        TrainConfig(deepspeed_stage=3, policy="lora").validate()
    TrainConfig(deepspeed_stage=3, svd_cache="x").validate()


def test_seen_table_runs_every_method_and_resumes(tmp_path, tiny_random, monkeypatch):
    from t2ray.experiments.seen import METHODS, seen_table

    path, cache = tiny_random
    cfg = TrainConfig(model=str(path), svd_cache=str(cache.root), steps=1, prompts_per_step=2,
                      eval_every=1, eval_n=2, threads=1, lora_rank=2, lora_alpha=4.0)
    rows = seen_table(cfg, ["reasoning"], [0, 1], list(METHODS), tmp_path / "seen", n_test=8,
                      results_json=tmp_path / "results.json")
    assert [r.method for r in rows] == ["base", *METHODS]
    svf = rows[1]
    assert svf.n_seeds == 2 and svf.params == sum(cache.ranks().values())
    assert 0 <= svf.get("mcnemar_p_vs_base_seed0") <= 1
    assert json.loads((tmp_path / "results.json").read_text())[0]["table"] == "seen"
    # the per-item verdicts re-derive every row; the intervals hold the means
    from t2ray.eval.results import read_verdicts

    kept = read_verdicts(tmp_path / "scores" / "seen.jsonl.gz")
    for r in rows:
        mine = [k for k in kept if (k["task"], k["method"]) == (r.task, r.method)]
        assert len(mine) == r.n_seeds and all(k["n"] == 8 for k in mine)
        accs = [100 * k["verdicts"].count("1") / k["n"] for k in mine]
        assert r.mean == pytest.approx(sum(accs) / len(accs), abs=0.01)
        low, high = r.get("ci95")
        assert low - 1e-9 <= r.mean <= high + 1e-9
        if r.method != "base":
            d_low, d_high = r.get("diff_vs_base_ci95")
            assert d_low - 1e-9 <= r.mean - rows[0].mean <= d_high + 1e-9
    table = (tmp_path / "seen" / "table.md").read_text().splitlines()
    assert table[0].startswith("| task | base | svf-rl (") and table[2].startswith("| reasoning |")
    # A second sweep over the same directory reuses every finished run: nothing is retrained.
    import t2ray.rl.launch

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(t2ray.rl.launch, "train", no_training)
    monkeypatch.chdir(tmp_path)  # a relative --out names the same runs (trainers resolve paths)
    again = seen_table(cfg, ["reasoning"], [0, 1], list(METHODS), Path("seen"), n_test=8)
    assert [(r.method, r.mean, r.get("seeds")) for r in again] == [
        (r.method, r.mean, r.get("seeds")) for r in rows]
    # a changed setting (a KL coefficient chosen later) retrains that run instead of reusing it
    retrained = []
    monkeypatch.setattr(t2ray.rl.launch, "train", lambda c, workers: retrained.append(c.kl_coef))
    seen_table(cfg, ["reasoning"], [0], ["svf-rl"], tmp_path / "seen", n_test=8,
               task_overrides={"reasoning": {"svf-rl": {"kl_coef": 0.1}}})
    assert retrained == [0.1]


def test_tuning_reads_validation_only_and_overrides_reach_the_run(tmp_path, tiny_random,
                                                                  monkeypatch):
    import yaml

    import t2ray.eval.harness as harness
    from t2ray.experiments.seen import seen_table, tune_on_validation

    path, cache = tiny_random
    cfg = TrainConfig(model=str(path), svd_cache=str(cache.root), steps=1, prompts_per_step=2,
                      eval_every=1, eval_n=2, threads=1)
    splits = []
    real_evaluate = harness.evaluate_task

    def recording(engine, task, split="test", n=None, system=None):
        splits.append(split)
        return real_evaluate(engine, task, split, n, system)

    import t2ray.experiments.seen
    import t2ray.rl.trainer

    for module in (t2ray.rl.trainer, t2ray.experiments.seen):
        monkeypatch.setattr(module, "evaluate_task", recording)
    summary = tune_on_validation(cfg, "reasoning", "svf-rl", {"lr": [0.01, 0.1]},
                                 tmp_path / "tune")
    assert set(splits) == {"validation"}  # the test split is never read while tuning
    best = max(summary["points"], key=lambda p: p["val_accuracy"])
    assert summary["selected"] == {"lr": best["lr"]}
    assert json.loads((tmp_path / "tune" / "reasoning" / "svf-rl" / "tuning.json").read_text())
    # per-task overrides win over per-method ones in the sweep
    seen_table(cfg, ["reasoning"], [0], ["svf-rl"], tmp_path / "seen", n_test=4,
               method_overrides={"svf-rl": {"lr": 0.5, "temperature": 0.5}},
               task_overrides={"reasoning": {"svf-rl": {"lr": 0.25}}})
    run = yaml.safe_load((tmp_path / "seen" / "reasoning" / "svf-rl" / "seed0" /
                          "train_config.yaml").read_text())
    assert (run["lr"], run["temperature"]) == (0.25, 0.5)


def test_grid_values_with_commas_come_as_a_yaml_list_and_name_a_clean_directory():
    from t2ray.experiments.seen import grid_label, parse_grid
    from t2ray.rl.reinforce import KL_FORMS

    grid = parse_grid(TrainConfig(), ["kl_coef=0,0.1", f'kl_form=["{KL_FORMS[1]}"]'])
    assert grid == {"kl_coef": [0.0, 0.1], "kl_form": [KL_FORMS[1]]}
    assert grid_label({"kl_coef": 0.1, "kl_form": KL_FORMS[1]}) == \
        "kl_coef0.1_kl_formref-pi-sequence-sum"
    assert grid_label({}) == "default"
    with pytest.raises(ValueError, match="non-empty YAML list"):
        parse_grid(TrainConfig(), ["kl_form=[]"])


def test_multi_task_runs_judge_each_example_by_its_own_task(tmp_path, tiny_random):
    from t2ray.rl.trainer import _verify
    from t2ray.tasks import get_task
    from t2ray.tasks.rewards import CORRECT, RewardCache

    math, words = get_task("math"), get_task("dashes-first")
    examples = [math.examples("train", 2)[0], words.examples("train", 1)[0],
                math.examples("train", 2)[1]]
    texts = [examples[0].solution, "nonsense", examples[2].solution]
    rewards = _verify({t.name: RewardCache(t.kind) for t in (math, words)}, examples, texts)
    assert rewards[0] == CORRECT and rewards[2] == CORRECT and rewards[1] != CORRECT
    path, _ = tiny_random
    result = train_loop(asdict(TrainConfig(
        out=str(tmp_path / "mt"), model=str(path), task="upper-word,dashes-first",
        policy="lora", objective="sft", steps=2, prompts_per_step=4, eval_every=2, eval_n=2,
        threads=1, lora_rank=2, lora_alpha=4.0)))
    assert 0 <= result["history"][-1]["val_accuracy"] <= 1
    with pytest.raises(KeyError):
        TrainConfig(task="math,no-such-task", svd_cache="x").validate()


def test_rl_on_a_closed_label_set_samples_labels(tmp_path, tiny_model):
    """The routing task's rollouts are drawn among its labels (the free-running tiny model never
    emits one), so rewards carry signal; greedy picks are the router's decision."""
    from t2ray.adapt.router import Router
    from t2ray.engines.hf import HFEngine
    from t2ray.rl.trainer import label_completions, sample_labels
    from t2ray.svf.ops import decompose_model
    from t2ray.tasks import get_task

    model, tok = tiny_model
    route = get_task("route")
    questions = [e.prompt for e in route.examples("validation", 6)]
    engine = HFEngine(model, tok)
    greedy = [route.labels[i] for i in sample_labels(engine, questions, route.labels, 0.0, 0)]
    from t2ray.tasks.route import route_prompt

    raw = [q.split("Question: ", 1)[1] for q in questions]
    assert [route_prompt(q) for q in raw] == questions
    assert greedy == Router(engine).route(raw)
    sampled = label_completions(tok, route.labels,
                                sample_labels(engine, questions * 4, route.labels, 1.0, 1))
    assert {c.text for c in sampled} <= set(route.labels)
    assert len(set(c.text for c in sampled)) > 1
    assert all(tok.decode(c.token_ids) == c.text for c in sampled)
    result = train_loop(asdict(TrainConfig(
        out=str(tmp_path / "route"), task="route", svd_cache=str(decompose_model("tiny", "mlp").root),
        steps=2, prompts_per_step=8, samples_per_prompt=2, eval_every=2, eval_n=8, threads=1)))
    assert any(h["reward_mean"] > -1 for h in result["history"])
    assert 0 <= result["history"][-1]["val_accuracy"] <= 1
    with pytest.raises(ValueError, match="closed label set"):
        TrainConfig(task="route,math", svd_cache="x").validate()


def test_enumerated_label_rollouts_always_carry_a_gradient(tmp_path):
    """With every label scored and weighted by its probability, no step is lost to a group whose
    samples all drew the same label (the sampled classifier's zero-gradient steps)."""
    from t2ray.svf.ops import decompose_model

    result = train_loop(asdict(TrainConfig(
        out=str(tmp_path / "route"), task="route", svd_cache=str(decompose_model("tiny", "mlp").root),
        steps=3, prompts_per_step=4, samples_per_prompt=1, baseline="group", label_rollouts="all",
        logprob_reduction="mean", eval_every=3, eval_n=4, threads=1)))
    history = result["history"]
    assert all(h["grad_norm"] > 0 for h in history)
    assert all(-1 <= h["reward_mean"] <= 1 for h in history)
    assert 0 <= history[-1]["val_accuracy"] <= 1
    for bad, match in [(dict(task="math"), "closed label set"),
                       (dict(samples_per_prompt=4), "samples_per_prompt"),
                       (dict(temperature=0.0), "temperature"),
                       (dict(logprob_reduction="sum"), "logprob_reduction"),
                       (dict(label_rollouts="some"), "'sample' or 'all'")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**{"task": "route", "svd_cache": "x", "label_rollouts": "all",
                           "logprob_reduction": "mean", **bad}).validate()
