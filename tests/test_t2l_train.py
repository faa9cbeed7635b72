"""T2L training: reconstruction reproduces a LoRA library, SFT through the base model lowers the
completion loss, held-out families are refused, and runs checkpoint for `t2ray t2l generate`."""

import json

import pytest
import torch

from t2ray.lora.peft_io import export_peft
from t2ray.lora.weights import init_lora
from t2ray.t2l.encoder import DescriptionEncoder
from t2ray.t2l.generate import T2LCheckpoint
from t2ray.t2l.train import T2LTrainConfig, train_t2l
from t2ray.tasks import get_task

TASKS = ["upper-word", "sort-letters-word", "dashes-first"]


def small(tmp_path, **kw) -> T2LTrainConfig:
    base = dict(out=str(tmp_path / "t2l"), tasks=TASKS, tasks_per_batch=3, examples_per_task=2,
                eval_every=1000, eval_tasks=1, eval_n=4, threads=1, latent=32, head_in=64)
    return T2LTrainConfig(**{**base, **kw})


def random_library(model, root):
    """One random rank-8 LoRA per training task (B nonzero), as PEFT directories."""
    for k, task in enumerate(TASKS):
        g = torch.Generator().manual_seed(k)
        lora = init_lora(model, 8, 16.0, generator=g)
        for b in lora.b.values():
            b.normal_(0, 0.02, generator=g)
        export_peft(lora, root / task)
    return root


def test_tasks_are_visited_evenly():
    """Every task once per epoch, distinct tasks in each batch, a new order each epoch."""
    from collections import Counter

    from t2ray.t2l.train import task_batch

    tasks = [f"t{i}" for i in range(10)]
    for k in (2, 5, 4):
        per_epoch = -(-10 // k)
        for epoch in range(3):
            batches = [task_batch(tasks, k, epoch * per_epoch + j, "0")
                       for j in range(per_epoch)]
            assert all(len(set(b)) == len(b) == k for b in batches)
            counts = Counter(t for b in batches for t in b)
            assert set(counts) == set(tasks) and max(counts.values()) <= 2
            if 10 % k == 0:
                assert set(counts.values()) == {1}
    assert task_batch(tasks, 5, 0, "0") != task_batch(tasks, 5, 2, "0")


def test_tasks_exist_and_are_seen():
    assert all(get_task(t).seen for t in TASKS)


def test_reconstruction_reproduces_the_library(tiny_model, tmp_path):
    library = random_library(tiny_model[0], tmp_path / "library")
    # each task has 33 training descriptions to map onto its LoRA
    result = train_t2l(small(tmp_path, objective="recon", library=str(library), steps=400,
                             lr=1e-2))
    losses = [h["loss"] for h in result["history"]]
    assert sum(losses[-10:]) / 10 < 0.25 * losses[0]
    ckpt = T2LCheckpoint.load(tmp_path / "t2l" / "checkpoint")
    encoder = DescriptionEncoder(ckpt.encoder)
    generated = ckpt.generate(encoder, [get_task(t).descriptions[0] for t in TASKS])
    from t2ray.lora.peft_io import import_peft

    targets = [import_peft(library / t) for t in TASKS]
    for i, lora in enumerate(generated):  # each description lands nearest its own task's LoRA
        dist = [sum((lora.b[n] - t.b[n]).abs().sum() for n in t.b) for t in targets]
        assert min(range(len(TASKS)), key=dist.__getitem__) == i


def test_one_hot_task_embeddings_reconstruct_the_library_updates(tiny_model, tmp_path):
    """The capacity check: one vector per training task (no description encoder) and the
    reference's delta-W targets; each task's generated update B A lands nearest its own
    library update, and the checkpoint refuses a description it was not trained with."""
    from t2ray.lora.peft_io import import_peft
    from t2ray.t2l.encoder import load_encoder

    library = random_library(tiny_model[0], tmp_path / "library")
    result = train_t2l(small(tmp_path, objective="recon", library=str(library), steps=400,
                             lr=1e-2, task_embedding="one-hot", recon_target="delta_w"))
    losses = [h["loss"] for h in result["history"]]
    assert sum(losses[-10:]) / 10 < 0.5 * losses[0]
    ckpt = T2LCheckpoint.load(tmp_path / "t2l" / "checkpoint")
    assert ckpt.encoder == "one-hot:" + ",".join(TASKS)
    encoder = load_encoder(ckpt.encoder)
    generated = ckpt.generate(encoder, [get_task(t).probe_descriptions[0] for t in TASKS])
    targets = [import_peft(library / t) for t in TASKS]
    for i, lora in enumerate(generated):
        dist = [sum((lora.b[n] @ lora.a[n] - t.b[n] @ t.a[n]).abs().sum() for n in t.b)
                for t in targets]
        assert min(range(len(TASKS)), key=dist.__getitem__) == i
    with pytest.raises(ValueError, match="knows only its 3 training tasks"):
        encoder.encode(["Reverse the word."])


def test_a_diverging_run_restarts_from_its_last_good_state_at_half_the_lr():
    """A loss spike restores the state kept at the last checkpoint step, halves the schedule's
    base rate and is written into the history; a run that keeps diverging stops with an error."""
    from t2ray.distributed.loop import DivergenceGuard, Trainable, scheduler, train_steps

    w = torch.nn.Parameter(torch.tensor([1.0]))
    module = torch.nn.Module()
    module.w = w
    opt = torch.optim.SGD([w], lr=0.1)
    spikes = {12: 1}  # step -> times it spikes

    def step(i):
        loss = (w - 3).square().sum()
        if spikes.get(i, 0) > 0:
            spikes[i] -= 1
            return loss * 1e6, {"loss": loss.item() * 1e6}
        return loss, {"loss": loss.item()}

    parts = Trainable(module, opt, scheduler(opt, 20, "constant"), step, lambda: {})
    history = train_steps(parts, 20, 1.0, 1000, 5, "toy", DivergenceGuard(window=5))
    restart = next(h for h in history if "restart" in h)
    assert restart == {"step": 13, "diverged_loss": pytest.approx(restart["diverged_loss"]),
                       "restored_step": 10, "restart": 1}
    assert [h["step"] for h in history if "loss" in h] == list(range(1, 21))
    assert [h["lr"] for h in history if "loss" in h][10:] == [0.05] * 10
    spikes[4] = 5
    w.data.fill_(1.0)
    opt = torch.optim.SGD([w], lr=0.1)
    parts = Trainable(module, opt, scheduler(opt, 20, "constant"), step, lambda: {})
    with pytest.raises(RuntimeError, match="diverged at step 5 .* after 2 restarts"):
        train_steps(parts, 20, 1.0, 1000, 5, "toy", DivergenceGuard(window=3))


def test_sft_lowers_the_completion_loss_and_checkpoints(tmp_path):
    result = train_t2l(small(tmp_path, steps=40, lr=3e-3, eval_every=40))
    nll = [h["nll"] for h in result["history"]]
    assert sum(nll[-8:]) / 8 < 0.8 * sum(nll[:8]) / 8
    assert 0 <= result["history"][-1]["val_accuracy"] <= 1
    out = tmp_path / "t2l"
    manifest = json.loads((out / "checkpoint" / "manifest.json").read_text())
    assert manifest["train"]["objective"] == "sft" and manifest["hyper"]["variant"] == "M"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 40
    assert (out / "loss_curve.png").stat().st_size > 0


def test_the_reference_schedule_warms_up_then_decays_linearly(tmp_path):
    """20% warmup, a straight line to zero, label smoothing 0.1: the reference's recipe knobs
    reach the run (the lr each step is in its metrics)."""
    result = train_t2l(small(tmp_path, steps=10, lr=1e-3, schedule="linear", warmup_ratio=0.2,
                             label_smoothing=0.1))
    lrs = [h["lr"] for h in result["history"]]
    # the lr logged after step k is the one the next step uses
    assert lrs == pytest.approx([1e-3, 1e-3] + [1e-3 * (1 - k / 8) for k in range(1, 9)])
    assert all(h["nll"] > 0 for h in result["history"])


def test_bad_configs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="held-out"):
        small(tmp_path, tasks=["reverse-word"], tasks_per_batch=1).validate()
    with pytest.raises(ValueError, match="needs library"):
        small(tmp_path, objective="recon").validate()
    with pytest.raises(ValueError, match="objective"):
        small(tmp_path, objective="dpo").validate()
    with pytest.raises(ValueError, match="schedule must be cosine or linear"):
        small(tmp_path, schedule="constant").validate()
    with pytest.raises(ValueError, match="warmup_ratio, label_smoothing and lora_dropout"):
        small(tmp_path, label_smoothing=1.0).validate()
    with pytest.raises(ValueError, match="task_embedding"):
        small(tmp_path, task_embedding="bag-of-words").validate()
    with pytest.raises(ValueError, match="recon_target"):
        small(tmp_path, recon_target="svd").validate()
    with pytest.raises(FileNotFoundError, match="no LoRA for task"):
        train_t2l(small(tmp_path, objective="recon", library=str(tmp_path / "none"), steps=1))
    with pytest.raises(ValueError, match="validation families must be seen"):
        small(tmp_path, val_tasks=["reverse-word"]).validate()
    with pytest.raises(ValueError, match="one-hot task embedding cannot read"):
        small(tmp_path, val_tasks=[TASKS[0]], task_embedding="one-hot", tasks_per_batch=2,
              objective="recon", library="x").validate()


def test_validation_families_are_left_out_of_training_and_read_apart(tmp_path, monkeypatch):
    """A validation family never reaches a training batch and is read on its validation split
    with its own descriptions (the items taking turns over several of them)."""
    import t2ray.t2l.train as train_mod

    read = []
    real = train_mod.validation_accuracy

    def recording(ckpt, encoder, model, tok, names, n, svd_cache=None, n_descriptions=1):
        read.append((list(names), n_descriptions))
        return real(ckpt, encoder, model, tok, names, n, svd_cache, n_descriptions)

    batches = []
    real_batch = train_mod.task_batch
    monkeypatch.setattr(train_mod, "validation_accuracy", recording)
    monkeypatch.setattr(train_mod, "task_batch",
                        lambda *a: batches.append(real_batch(*a)) or batches[-1])
    cfg = small(tmp_path, val_tasks=[TASKS[2]], tasks_per_batch=2, steps=4, eval_every=4,
                eval_n=5)
    assert cfg.task_names() == TASKS[:2]
    result = train_t2l(cfg)
    assert {t for b in batches for t in b} == set(TASKS[:2]) and len(batches) == 4
    assert read[-1] == ([TASKS[2]], train_mod.VAL_DESCRIPTIONS) and read[0][0] != [TASKS[2]]
    last = result["history"][-1]
    assert 0 <= last["val_heldout_accuracy"] <= 1 and "val_accuracy" in last


def test_text_to_svf_learns_through_the_factorized_path(tmp_path):
    """Variant Z emits expert vectors (z for every MLP matrix) that start at the identity, lower
    the completion loss under SFT, and load as ordinary library experts."""
    from t2ray.svf.expert import ExpertVector
    from t2ray.svf.ops import decompose_model

    result = train_t2l(small(tmp_path, variant="Z", steps=40, lr=3e-3, eval_every=40))
    nll = [h["nll"] for h in result["history"]]
    assert sum(nll[-8:]) / 8 < 0.9 * sum(nll[:8]) / 8
    cache = decompose_model("tiny", "mlp")
    ckpt = T2LCheckpoint.load(tmp_path / "t2l" / "checkpoint")
    expert = ckpt.generate(DescriptionEncoder(ckpt.encoder), [get_task(TASKS[0]).descriptions[0]],
                           svd_cache=cache)[0]
    assert expert.num_params == sum(cache.ranks().values())  # hundreds, not a LoRA's thousands
    expert.save(tmp_path / "expert")
    assert ExpertVector.load(tmp_path / "expert", expect_fingerprint=cache.fingerprint).z.keys() \
        == cache.ranks().keys()
    with pytest.raises(ValueError, match="objective 'sft' only"):
        small(tmp_path, variant="Z", objective="recon", library="x").validate()
