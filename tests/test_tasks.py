"""The task suite: determinism, content-disjoint splits, sizes, descriptions, verifiers."""

import random

import pytest

from t2ray.tasks import CORE_SEEN, CORE_UNSEEN, get_task, list_tasks, registry
from t2ray.tasks.base import content_split
from t2ray.tasks.rewards import (
    CORRECT,
    WRONG,
    last_boxed,
    last_number,
    parse_choice,
    reward,
)

CORE = CORE_SEEN + CORE_UNSEEN
NON_CODE = [n for n in CORE if get_task(n).kind != "code"]


def test_registry_shape():
    tasks = registry("v1")  # the v2 grid's shape: tests/test_tasks_v2.py
    instruct = list_tasks("instruct", "v1")
    assert set(CORE) <= set(tasks)
    assert len(instruct) >= 100
    assert all(len(t.descriptions) >= 5 for t in tasks.values())
    assert all(len(set(t.descriptions)) == len(t.descriptions) for t in tasks.values())
    assert sum(not t.seen for t in instruct) >= 10
    assert all(get_task(n).seen for n in CORE_SEEN)
    assert not any(get_task(n).seen for n in CORE_UNSEEN)
    with pytest.raises(KeyError, match="unknown task"):
        get_task("no-such-task")


@pytest.mark.parametrize("name", CORE)
def test_core_splits_are_deterministic_large_and_disjoint(name):
    task = get_task(name)
    test = task.examples("test")
    # code's content space holds 500 test contents (13 operations x 250 constants, 20% of them)
    assert len(test) == task.split_sizes["test"] >= (500 if name == "code" else 1000)
    assert [e.uid for e in task.examples("test", 50)] == [e.uid for e in test[:50]]
    train_prompts = {e.prompt for e in task.examples("train")}
    val_prompts = {e.prompt for e in task.examples("validation")}
    test_prompts = {e.prompt for e in test}
    assert not (train_prompts & test_prompts) and not (val_prompts & test_prompts)
    assert len(test_prompts) == len(test)


@pytest.mark.parametrize("name", CORE)
def test_splits_follow_the_content_key_not_the_text(name):
    """Every generated item lands in the split its content key hashes to."""
    task = get_task(name)
    rng = random.Random(123)
    seen_keys: dict[str, str] = {}
    for _ in range(300):
        key, _ = task.generate(rng)
        split = content_split(f"{name}|{key}")
        assert seen_keys.setdefault(key, split) == split
    assert len(set(seen_keys.values())) == 3


@pytest.mark.parametrize("name", NON_CODE)
def test_reference_solutions_score_and_distractors_do_not(name):
    task = get_task(name)
    rng = random.Random(0)
    for ex in task.examples("validation", 100):
        assert task.reward(ex, ex.solution) == CORRECT
        assert task.reward(ex, task.distractor(ex, rng)) == WRONG
        assert task.reward(ex, "") == WRONG


def test_instruct_families_verify_their_own_answers():
    for task in list_tasks("instruct"):
        examples = task.examples("test", 20)
        assert all(task.reward(e, e.solution) == CORRECT for e in examples)
        assert all(task.reward(e, e.solution + "x") == WRONG for e in examples[:3])
        inputs = {e.meta["input"] for e in task.examples("train")}
        assert not inputs & {e.meta["input"] for e in task.examples("test")}


def test_verifier_parsing():
    assert last_number("3+4=7. 7-5=2. The answer is 2.") == 2
    assert last_number("it costs 1,250 dollars") == 1250
    assert last_number("no digits") is None
    assert last_number("x = -3.5") == -3.5
    assert parse_choice("47. The answer is D.") == "D"
    assert parse_choice("I think (B)") == "B"
    assert parse_choice("no idea") is None  # never a random-guess credit
    assert last_boxed(r"so \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"
    assert last_boxed("nothing") is None
    with pytest.raises(ValueError, match="unknown reward kind"):
        reward("telepathy", get_task("math").examples("test", 1)[0], "1")


def test_reward_cache_verifies_each_pair_once_and_agrees_with_rewards(monkeypatch):
    import t2ray.tasks.rewards as rw

    task = get_task("code")
    ex = task.examples("validation", 3)
    completions = [ex[0].solution, "def nope(): pass", ex[1].solution]
    calls = []
    real = rw.rewards

    def counting(kind, examples, texts):
        calls.append(len(texts))
        return real(kind, examples, texts)

    monkeypatch.setattr(rw, "rewards", counting)
    cache = rw.RewardCache("code")
    first = cache([ex[0], ex[0], ex[1]], completions)
    assert first == real("code", [ex[0], ex[0], ex[1]], completions) == [CORRECT, WRONG, CORRECT]
    again = cache([ex[1], ex[0], ex[2]], [ex[1].solution, "def nope(): pass", ex[2].solution])
    assert again == [CORRECT, WRONG, CORRECT]
    assert calls == [3, 1]  # only the new pair runs; repeated (item, completion) pairs do not
