"""Every caller of an engine runs on one that has no model and no tokenizer (`FakeEngine`):
the router, the two-pass runner, the few-shot scorer, label-set rollouts and the evaluation
harness use the engine interface only. The source of the adaptation, evaluation and experiment
layers never reads an engine's internals."""

import ast
from pathlib import Path

import pytest
import torch
from fake_engine import FakeEngine

from t2ray.adapt.fewshot import ShotScorer
from t2ray.adapt.router import BASE, Router
from t2ray.adapt.two_pass import TwoPass
from t2ray.eval.harness import evaluate_task
from t2ray.rl.trainer import label_accuracy, label_distribution, sample_labels
from t2ray.svf.expert import ExpertVector, SVFParam
from t2ray.tasks import get_task
from t2ray.tasks.route import CATEGORIES

PACKAGE = Path(__file__).resolve().parents[1] / "t2ray"


def _expert(task: str, value: float) -> ExpertVector:
    return ExpertVector(z={"m": torch.tensor([value])}, param=SVFParam("linear"),
                        base_fingerprint="f" * 16, task=task)


def _tag(adapter) -> str:
    return "base" if adapter is None else adapter.task


def test_the_fake_engine_has_no_model_or_tokenizer():
    engine = FakeEngine(lambda p, a: "")
    assert not hasattr(engine, "model") and not hasattr(engine, "tokenizer")


def test_router_scores_labels_under_the_classifier_only():
    # the base prefers `code`; the classifier expert prefers the label named in the question
    def score(prompt, label, adapter):
        if adapter is None:
            return 0.0 if label == "code" else -5.0
        return 0.0 if label in prompt.user.split("Question:")[-1] else -5.0

    engine = FakeEngine(lambda p, a: "", score)
    questions = ["about math", "about reasoning", "about other things"]
    assert Router(engine).route(questions) == ["code"] * 3
    classifier = _expert("route", 1.0)
    assert Router(engine, classifier=classifier).route(questions) == ["math", "reasoning", BASE]
    assert [c[0] for c in engine.calls] == ["score", "score"]
    assert engine.calls[1][1] is classifier and engine.calls[1][2] == 3 * len(CATEGORIES)
    assert engine._adapter is None  # back on the base


def test_two_pass_runs_each_group_under_its_expert():
    experts = {"math": _expert("math", 1.0), "code": _expert("code", 2.0)}
    routes = {"q1": "math", "q2": BASE, "q3": "code", "q4": "math", "q5": "reasoning"}

    class Fixed(Router):
        def route(self, questions):
            return [routes[q] for q in questions]

    engine = FakeEngine(lambda p, a: f"{p.user}:{_tag(a)}")
    result = TwoPass(engine, experts, Fixed(engine)).run(list(routes), max_new_tokens=20)
    assert result.completions == ["q1:math", "q2:base", "q3:code", "q4:math", "q5:base"]
    assert result.group_sizes == {"math": 2, BASE: 1, "code": 1, "reasoning": 1}


def test_few_shot_scorer_scores_the_mixture_through_the_interface():
    task = get_task("math")
    solutions = {e.prompt: e.solution for e in task.examples("validation")}
    # right answers only when the mixture leans on the math expert (alpha_0 > alpha_1)
    engine = FakeEngine(lambda p, a: solutions[p.user] if a.z["m"][0] > 1.5 else "no idea",
                        lambda p, c, a: -2.0)
    scorer = ShotScorer(engine, [_expert("math", 3.0), _expert("code", 0.0)])
    scorer.set_task("math", shots=4, select=2)
    good, bad = scorer.score([1.0, 0.0]), scorer.score([0.2, 1.0])
    assert good["accuracy"] == 1.0 and bad["accuracy"] == 0.0
    assert good["loglik"] == pytest.approx(-2.0 / (len(scorer.sets["shots"][0].solution) + 1),
                                           rel=0.5)
    assert scorer.score([1.0, 0.0], on="selection")["accuracy"] == 1.0


def test_label_set_rollouts_follow_the_engine_scores():
    route = get_task("route")
    examples = route.examples("validation", 12)
    answers = {e.prompt: e.answer for e in examples}
    # log p(label) = 0 for the right label, -3 for every other one
    engine = FakeEngine(lambda p, a: "", lambda p, c, a: 0.0 if answers[p.user] == c else -3.0)
    questions = [e.prompt for e in examples]
    probs = label_distribution(engine, questions, route.labels, temperature=1.0)
    scores = torch.tensor([[0.0 if answers[q] == lab else -3.0 for lab in route.labels]
                           for q in questions])
    per_token = scores / torch.tensor([len(lab) + 1.0 for lab in route.labels])
    assert torch.allclose(probs, torch.softmax(per_token, -1), atol=1e-6)
    greedy = sample_labels(engine, questions, route.labels, 0.0, 0)
    assert [route.labels[i] for i in greedy] == [answers[q] for q in questions]
    assert label_accuracy(engine, route, "validation", 12) == 1.0


def test_harness_counts_what_the_verifier_accepts_on_any_engine():
    task = get_task("math")
    examples = task.examples("test", 10)
    right = {e.prompt for e in examples[:7]}
    solutions = {e.prompt: e.solution for e in examples}
    engine = FakeEngine(lambda p, a: solutions[p.user] if p.user in right else "?")
    row = evaluate_task(engine, task, "test", 10)
    assert (row.correct, row.n) == (7, 10) and row.ci_low < 0.7 < row.ci_high
    assert row.item_correct == (True,) * 7 + (False,) * 3 and "item_correct" not in row.as_dict()
    with engine.adapted(_expert("math", 1.0)):
        evaluate_task(engine, task, "test", 2, system="be brief")
    assert engine.calls[-1][1].task == "math"


INTERNALS = {"model", "tokenizer", "svd_cache", "set_expert", "set_lora", "reset", "_adapter"}


@pytest.mark.parametrize("package", ["adapt", "eval", "experiments"])
def test_no_caller_reads_engine_internals(package):
    """`<something engine-like>.model` / `.tokenizer` / ... never appears in these layers."""
    offenders = []
    for path in (PACKAGE / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in INTERNALS:
                owner = ast.unparse(node.value)
                if "engine" in owner.lower() or owner in ("eng", "self.engine"):
                    offenders.append(f"{path.name}:{node.lineno} {owner}.{node.attr}")
    assert offenders == []
