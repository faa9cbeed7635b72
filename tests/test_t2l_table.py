"""The T2L table job: every method scored, nothing held out leaks into training, reruns resume."""

import random

import pytest

from t2ray.experiments.t2l import T2LTableConfig, all_methods, random_description
from t2ray.rl.trainer import TrainConfig, train_loop
from t2ray.tasks import get_task

TRAIN = ["reverse-each", "reverse-first", "upper-word", "upper-first", "double-word",
         "double-each", "dashes-each", "swap-ends-word"]


def test_describe_gives_every_training_prompt_its_own_tasks_description(tmp_path, tiny_random,
                                                                        monkeypatch):
    import t2ray.rl.trainer as trainer

    path, _ = tiny_random
    seen_systems = []
    real = trainer.prompt_ids

    def recording(tok, prompt):
        seen_systems.append((prompt.user, prompt.system))
        return real(tok, prompt)

    monkeypatch.setattr(trainer, "prompt_ids", recording)
    tasks = ["reverse-each", "upper-word"]
    for describe in (False, True):
        seen_systems.clear()
        train_loop(dict(out=str(tmp_path / f"d{describe}"), model=str(path), task=",".join(tasks),
                        policy="lora", objective="sft", lora_rank=2, lora_alpha=4.0,
                        describe=describe, steps=1, prompts_per_step=6, eval_every=100,
                        threads=1))
        assert len(seen_systems) == 6
        systems = [s for _, s in seen_systems]
        if not describe:
            assert systems == [None] * 6
            continue
        by_input = {e.prompt: e.task for t in tasks for e in get_task(t).examples("train")}
        for user, system in seen_systems:
            assert system in get_task(by_input[user]).descriptions


def test_labelled_tasks_refuse_descriptions():
    with pytest.raises(ValueError, match="describe needs open answers"):
        TrainConfig(task="route", describe=True, svd_cache="x").validate()


def test_table_config_refuses_leaks():
    with pytest.raises(ValueError, match="held-out families only"):
        T2LTableConfig(tasks=["reverse-each"]).validate()
    with pytest.raises(ValueError, match="may not be trained on"):
        T2LTableConfig(train_tasks=["reverse-longest", "reverse-each"]).validate()
    T2LTableConfig().validate()
    assert not any(get_task(t).seen for t in T2LTableConfig().tasks)


def test_the_table_recipe_reaches_every_hypernetwork_and_may_not_override_the_table(tmp_path):
    cfg = T2LTableConfig(sft_recipe={"warmup_ratio": 0.2, "use_rslora": True},
                         recon_recipe={"recon_target": "delta_w"}, t2l_lr=3e-4, t2svf_lr=2e-3,
                         sft_steps=7, recon_steps=9, val_families=["upper-word"])
    cfg.validate()
    sft = cfg.train_config("t2l-sft-S", 1, tmp_path, None)
    assert (sft.variant, sft.objective, sft.steps, sft.lr, sft.seed) == ("S", "sft", 7, 3e-4, 1)
    assert sft.warmup_ratio == 0.2 and sft.use_rslora and sft.recon_target == "ab"
    assert "upper-word" in sft.tasks  # the table trains on the validation families
    z = cfg.train_config("t2svf", 0, tmp_path, None)
    assert (z.variant, z.lr, z.warmup_ratio) == ("Z", 2e-3, 0.2)
    onehot = cfg.train_config("t2l-onehot", 0, tmp_path, tmp_path / "lib")
    assert (onehot.task_embedding, onehot.objective, onehot.recon_target, onehot.steps) == (
        "one-hot", "recon", "delta_w", 9) and onehot.library == str(tmp_path / "lib")
    assert onehot.warmup_ratio == 0.0  # the SFT recipe is not the reconstruction's
    with pytest.raises(ValueError, match="not recipe fields"):
        T2LTableConfig(sft_recipe={"steps": 5}).validate()
    with pytest.raises(ValueError, match="not recipe fields"):
        T2LTableConfig(recon_recipe={"warmup": 0.2}).validate()
    with pytest.raises(ValueError, match="validation families must be seen"):
        T2LTableConfig(val_families=["reverse-longest"]).validate()


def test_tuning_reads_only_the_validation_families_and_resumes(tmp_path, tiny_random,
                                                              monkeypatch):
    import json

    import t2ray.experiments.t2l as t2l
    from t2ray.experiments.seen import parse_grid
    from t2ray.t2l.train import T2LTrainConfig

    path, _ = tiny_random
    cfg = T2LTableConfig(model=str(path), sft_steps=2, threads=1, train_tasks=TRAIN,
                         val_families=TRAIN[:2], sft_recipe={"tasks_per_batch": 3,
                                                             "eval_n": 3, "eval_tasks": 1})
    trained = []
    real = t2l.train_t2l
    monkeypatch.setattr(t2l, "train_t2l", lambda c, **k: trained.append(c) or real(c, **k))
    grid = parse_grid(T2LTrainConfig(), ["lr=0.001,0.01", "use_rslora=false"])
    assert grid == {"lr": [0.001, 0.01], "use_rslora": [False]}
    summary = t2l.tune_t2l(cfg, "t2l-sft-M", grid, tmp_path / "tune", tmp_path / "table")
    assert [c.lr for c in trained] == [0.001, 0.01]
    for c in trained:
        assert c.val_tasks == TRAIN[:2] and not set(c.task_names()) & set(TRAIN[:2])
    best = max(summary["points"], key=lambda p: p["val_heldout_accuracy"])
    assert summary["selected"] == best and len(summary["points"]) == 2
    record = json.loads((tmp_path / "tune" / "t2l-sft-M" / "tuning.json").read_text())
    assert record["val_families"] == TRAIN[:2]
    trained.clear()
    again = t2l.tune_t2l(cfg, "t2l-sft-M", {"lr": [0.01], "use_rslora": [False]},
                         tmp_path / "tune", tmp_path / "table")
    assert trained == [] and len(again["points"]) == 2  # finished points are reused and kept
    cfg.sft_steps = 3  # a changed recipe: the same grid point trains again
    t2l.tune_t2l(cfg, "t2l-sft-M", {"lr": [0.01], "use_rslora": [False]}, tmp_path / "tune",
                 tmp_path / "table")
    assert [(c.lr, c.steps) for c in trained] == [(0.01, 3)]
    with pytest.raises(ValueError, match="needs val_families"):
        t2l.tune_t2l(T2LTableConfig(), "t2l-sft-M", grid, tmp_path, tmp_path)
    with pytest.raises(ValueError, match="bad grid"):
        parse_grid(T2LTrainConfig(), ["use_rslora=yes"])


def test_random_descriptions_keep_length_and_differ():
    d = get_task("reverse-longest").descriptions[0]
    a, b = (random_description(d, random.Random(s)) for s in (0, 1))
    assert a != d and a != b and abs(len(a) - len(d)) <= 2
    assert a == random_description(d, random.Random(0))


@pytest.mark.slow
def test_t2l_table_scores_every_method_and_resumes(tmp_path, tiny_random, monkeypatch):
    from peft import LoraConfig

    import t2ray.experiments.t2l as t2l
    from t2ray.lora import import_peft

    path, _ = tiny_random
    cfg = T2LTableConfig(model=str(path), lora_steps=2, mt_steps=2, sft_steps=2, recon_steps=2,
                         n_test=10, seen_n=3, threads=1, tasks=["reverse-longest", "upper-each"],
                         train_tasks=TRAIN)
    rows = t2l.t2l_table(cfg, tmp_path, all_methods(), [0, 1])
    seen_rows = ["seen-mean", "seen-paraphrase-mean"]
    assert {(r.method, r.task) for r in rows} == {
        (m, t) for m in all_methods() if m not in t2l.SEEN_ONLY
        for t in ["reverse-longest", "upper-each", t2l.MEAN]} | {
        (m, t) for m in t2l.seen_read_methods() for t in seen_rows}
    assert "t2l-onehot" in t2l.described_methods()
    for r in rows:  # the answers of every adapter method are compared with the nearest family's
        if r.task not in seen_rows:
            assert (r.get("nearest_agreement") is None) == (r.method in t2l.FIXED)
    for r in rows:  # intervals over item contents, and paired ones against the comparisons
        if r.task in seen_rows:
            continue
        low, high = r.get("ci95")
        assert low <= r.mean <= high
        refs = {k for k in r.extra if k.startswith("diff_vs_")}
        if r.method in t2l.described_methods():
            assert refs == {f"diff_vs_{m}_ci95" for m in t2l.INTERVAL_REFS} - {
                f"diff_vs_{r.method}_ci95"}
        else:
            assert not refs
    for r in rows:
        assert r.n_seeds == len(t2l.seeds_of(r.method, [0, 1]))
        assert r.n_seeds == (1 if r.method in (*t2l.FIXED, "t2l-nearest") else 2)
        assert r.n == (3 if r.task in seen_rows else 10) and 0 <= r.mean <= 100
    # The library holds one PEFT adapter per training family, the reconstruction targets.
    for task in TRAIN:
        assert LoraConfig.from_pretrained(tmp_path / "library" / task).r == cfg.rank
    lora_params = {r.params for r in rows if r.method in ("task-lora", "mt-lora")}
    assert lora_params == {import_peft(tmp_path / "library" / TRAIN[0]).num_params}
    assert (tmp_path / "cells.png").stat().st_size > 0  # the heatmap of the rows
    # Each description of a family answers its share of the items, and every item is answered.
    verdicts = t2l.T2LTable(cfg, tmp_path).verdicts("t2l-sft-M", 1)
    assert {t: len(v) for t, v in verdicts.items()} == {"reverse-longest": 10, "upper-each": 10}

    def no_training(*a, **k):
        raise AssertionError("a rerun must not train again")

    monkeypatch.setattr(t2l, "train_t2l", no_training)
    monkeypatch.setattr("t2ray.rl.launch.train", no_training)
    assert t2l.t2l_table(cfg, tmp_path, all_methods(), [0, 1]) == rows


def test_agreement_with_the_nearest_family_reads_the_kept_answers(tmp_path, tiny_random):
    """Answers that are exactly what each item's nearest training family would output agree
    100%; the gold answers agree only where the two operations happen to coincide."""
    import json

    import t2ray.experiments.t2l as t2l
    from t2ray.tasks.grid import answer

    path, _ = tiny_random
    table = t2l.T2LTable(T2LTableConfig(model=str(path), tasks=["upper-each"], n_test=20,
                                        train_tasks=TRAIN), tmp_path)
    task = get_task("upper-each")
    examples = task.examples("test", 20)
    k = len(task.descriptions)
    near = [get_task(table.nearest_family(d)).cell for d in task.descriptions]
    mimic = [answer(*near[i % k], e.meta["input"].split()) for i, e in enumerate(examples)]
    out = tmp_path / "answers" / "t2l-sft-M"
    out.mkdir(parents=True)
    for seed, texts in ((0, mimic), (1, [e.answer for e in examples])):
        (out / f"seed{seed}.json").write_text(json.dumps(
            {"items": table._items_keys, "answers": {"upper-each": texts}}))
    assert table.nearest_agreement("t2l-sft-M", 0) == {"upper-each": 1.0}
    same = sum(m == e.answer for m, e in zip(mimic, examples)) / 20
    assert table.nearest_agreement("t2l-sft-M", 1) == {"upper-each": same} and same < 1
    assert table.nearest_agreement("t2l-sft-L", 0) is None  # no answers kept


def test_retrieval_finds_a_familys_own_description_and_the_tag_row_uses_tags(tmp_path,
                                                                             tiny_random):
    """t2l-nearest answers a description with the family it came from when that description is
    a training one; base+tag gives every item of a held-out cell the cell's pretraining tag."""
    import t2ray.experiments.t2l as t2l

    path, _ = tiny_random
    table = t2l.T2LTable(T2LTableConfig(model=str(path), tasks=["upper-each"],
                                        train_tasks=TRAIN), tmp_path)
    for family in TRAIN:
        for description in get_task(family).descriptions[:3]:
            assert table.nearest_family(description) == family
    assert table.nearest_family(get_task("upper-each").descriptions[0]) in TRAIN
    adapters, systems = table.adapters("base+tag", 0, "upper-each")
    assert set(systems) == {get_task("upper-each").tag} and set(adapters) == {None}
    _, systems = table.adapters("base+desc", 0, TRAIN[0], probes=True)  # the paraphrase probes
    assert systems == get_task(TRAIN[0]).probe_descriptions and len(systems) >= 3
    assert not set(systems) & set(get_task(TRAIN[0]).descriptions)
    _, systems = table.adapters("base+3shot", 0, "upper-each")
    train = get_task("upper-each").examples("train", 3)
    assert len(set(systems)) == 1 and all(e.prompt in systems[0] and e.solution in systems[0]
                                          for e in train)
    assert not any(e.prompt in systems[0] for e in get_task("upper-each").examples("test"))


def test_each_item_is_answered_with_its_descriptions_adapter_and_system_in_one_batch(
        tmp_path, tiny_random):
    """Item i of a family runs with description i mod k's adapter and system turn; all of a
    family's items go to the engine as one per-row batch."""
    import json

    import torch
    from fake_engine import FakeEngine

    import t2ray.experiments.t2l as t2l
    from t2ray.lora.weights import init_lora

    path, _ = tiny_random
    table = t2l.T2LTable(T2LTableConfig(model=str(path), tasks=["upper-each"], n_test=7,
                                        train_tasks=TRAIN), tmp_path)
    loras = [init_lora(table.model, 2, 4.0, generator=torch.Generator().manual_seed(k))
             for k in range(3)]
    table.adapters = lambda *a: (loras, ["s0", "s1", "s2"])
    table.engine = FakeEngine(lambda p, a: f"{[x is a for x in loras].index(True)}|{p.system}")
    table._verdicts("t2l-sft-M", 0, ["upper-each"], 7)
    kept = json.loads((tmp_path / "answers" / "t2l-sft-M" / "seed0.json").read_text())
    assert kept["answers"]["upper-each"] == [f"{i % 3}|s{i % 3}" for i in range(7)]
    assert [c[2] for c in table.engine.calls if c[0] == "generate"] == [7]


def test_the_demo_ships_the_v2_tables_seed_0_checkpoint(tmp_path):
    """The demo trains its T2L exactly as the v2 table trains its chosen SFT variant on seed 0
    (so the served checkpoint is the table's); a preset may only shorten it."""
    from t2ray.experiments.demo import PRESETS, T2L_CONFIG, demo_t2l_config

    table = T2LTableConfig.from_yaml(T2L_CONFIG)
    table.validate()
    assert demo_t2l_config("tiny", PRESETS["default"], tmp_path) == table.train_config(
        table.chosen_sft, 0, tmp_path, None)
    smoke = demo_t2l_config("tiny", PRESETS["smoke"], tmp_path)
    assert smoke.steps == PRESETS["smoke"].t2l_steps and smoke.lr == table.t2l_lr


def test_only_reconstruction_builds_the_library(tmp_path, tiny_random):
    import t2ray.experiments.t2l as t2l

    path, _ = tiny_random
    table = t2l.T2LTable(T2LTableConfig(model=str(path), sft_steps=1, threads=1,
                                        train_tasks=TRAIN, sft_recipe={"eval_n": 2,
                                                                       "eval_tasks": 1}),
                         tmp_path)

    def no_library():
        raise AssertionError("an SFT hypernetwork does not need the LoRA library")

    table.library = no_library
    assert table.checkpoint("t2l-sft-M", 0).net.cfg.variant == "M"
    assert [m for m in t2l.all_methods() if t2l.reconstructs(m)] == [
        "t2l-recon-L", "t2l-recon-M", "t2l-recon-S", "t2l-onehot"]


def test_the_variant_choice_reads_each_methods_best_validation_point(tmp_path):
    import json

    from t2ray.experiments.t2l import method_choice

    for method, readings in {"t2l-sft-M": [0.27, 0.48, 0.0], "t2l-sft-S": [0.36],
                             "t2l-sft-L": [0.41, 0.2]}.items():
        points = [{"val_heldout_accuracy": v, "run": f"{method}/{i}"}
                  for i, v in enumerate(readings)]
        (tmp_path / method).mkdir()
        (tmp_path / method / "tuning.json").write_text(json.dumps(
            {"method": method, "points": points,
             "selected": max(points, key=lambda p: p["val_heldout_accuracy"])}))
    choice = method_choice(tmp_path)
    assert choice == {"methods": {"t2l-sft-L": 0.41, "t2l-sft-M": 0.48, "t2l-sft-S": 0.36},
                      "chosen": "t2l-sft-M"}
    assert method_choice(tmp_path / "none") == {"methods": {}, "chosen": None}
