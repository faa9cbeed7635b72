"""Two-pass adaptation on the HF engine: label scores against a direct float64 computation,
and the dispatch (tests/test_engine_callers.py runs the same callers on a model-less engine)."""

import pytest
import torch

from t2ray.adapt.router import BASE, Router
from t2ray.adapt.two_pass import TwoPass
from t2ray.engines.base import label_scores
from t2ray.engines.hf import HFEngine
from t2ray.models import load_model
from t2ray.models.prompt import format_prompt
from t2ray.svf.expert import ExpertVector, SVFParam


@pytest.fixture(scope="module")
def engine(tiny_random):
    path, cache = tiny_random
    model, tok = load_model(path)
    return HFEngine(model, tok, svd_cache=cache)


def _expert(cache, scale: float, task: str) -> ExpertVector:
    g = torch.Generator().manual_seed(int(scale * 100))
    z = {n: 1 + scale * torch.randn(r, generator=g) for n, r in cache.ranks().items()}
    return ExpertVector.for_cache(cache, z, SVFParam("linear"), task=task)


def test_label_scores_equal_one_sequence_at_a_time_in_float64(engine):
    model, tok = engine.model, engine.tokenizer
    prompts, labels = ["What is 2+3?", "def f(x): pass"], ["math", "code", "other"]
    engine.batch_size = 4  # padded, split batches
    try:
        got = label_scores(engine, prompts, labels, per_token=False)
        per_token = label_scores(engine, prompts, labels)
    finally:
        engine.batch_size = 64
    ref_model = model.double()
    try:
        for i, p in enumerate(prompts):
            ctx = tok(format_prompt(tok, p), add_special_tokens=False)["input_ids"]
            for j, label in enumerate(labels):
                ans = tok(label, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                ids = torch.tensor([ctx + ans])
                logp = torch.log_softmax(ref_model(input_ids=ids).logits[0], -1)
                want = sum(logp[len(ctx) + k - 1, t] for k, t in enumerate(ans))
                assert got[i, j].item() == pytest.approx(want.item(), abs=1e-4)
                assert per_token[i, j].item() == pytest.approx(want.item() / len(ans), abs=1e-4)
    finally:
        model.float()


class FixedRouter(Router):
    """Routes by a given answer key, so the test checks the dispatch, not the classifier."""

    def __init__(self, engine, answers):
        super().__init__(engine)
        self.answers = answers

    def route(self, questions):
        return [self.answers[q] for q in questions]


def test_each_group_runs_with_its_expert_and_other_with_the_base_weights(engine, tiny_random):
    _, cache = tiny_random
    experts = {"math": _expert(cache, 0.5, "math"), "code": _expert(cache, 0.3, "code")}
    answers = {"q1": "math", "q2": BASE, "q3": "code", "q4": "math", "q5": "reasoning"}
    two_pass = TwoPass(engine, experts, FixedRouter(engine, answers))
    questions = list(answers)
    result = two_pass.run(questions, max_new_tokens=6)

    def direct(expert, q):
        with engine.adapted(expert):
            return engine.generate([q], max_new_tokens=6)[0].text

    for q, text in zip(questions, result.completions):
        want_expert = experts.get(answers[q])  # other and reasoning (no expert): base weights
        assert text == direct(want_expert, q)
    assert result.categories == [answers[q] for q in questions]
    assert result.group_sizes == {"math": 2, BASE: 1, "code": 1, "reasoning": 1}
    assert two_pass.expert_for(BASE) is None
    assert 0 < result.first_pass_share < 1
    # the engine is back on the base weights afterwards
    assert direct(None, "q1") == engine.generate(["q1"], max_new_tokens=6)[0].text


def test_router_scores_with_the_classifier_expert_and_restores_the_base(engine, tiny_random):
    _, cache = tiny_random
    before = {n: p.clone() for n, p in engine.model.named_parameters()}
    plain = Router(engine).route(["x = 1"])
    Router(engine, classifier=_expert(cache, 0.8, "route")).route(["x = 1"])
    assert plain[0] in Router(engine).categories
    assert all(torch.equal(before[n], p) for n, p in engine.model.named_parameters())


def test_experts_must_be_router_categories(engine):
    with pytest.raises(ValueError, match="not router categories"):
        TwoPass(engine, {"poetry": None}, Router(engine))


def test_an_unsure_router_abstains_to_the_base_and_the_threshold_is_chosen_on_validation():
    """Label scores (log-probabilities) of five questions: three confident and right, two
    unsure whose best label is wrong and whose truth is `other`. Only a threshold between the
    two confidence levels routes all five right; the lowest such threshold is chosen."""
    from t2ray.adapt.router import choose_threshold, pick_labels

    cats = ("math", "code", BASE)
    confident = torch.log(torch.tensor([0.9, 0.05, 0.05]))
    unsure = torch.log(torch.tensor([0.42, 0.33, 0.25]))
    scores = torch.stack([confident, confident.roll(2), confident, unsure, unsure])
    truth = ["math", BASE, "math", BASE, BASE]
    assert pick_labels(scores, cats, 0.0) == ["math", BASE, "math", "math", "math"]
    threshold, accuracy = choose_threshold(scores, truth, cats)
    assert accuracy == 1.0 and threshold == pytest.approx(0.45)  # grid step 0.05 above 0.42
    assert Router(None, categories=cats, threshold=threshold).pick(scores) == truth


def test_calibration_reads_route_validation_and_never_loses_to_no_threshold(tiny_model):
    """On the bundled base: the threshold comes from the routing task's validation items and
    routes them at least as well as never abstaining (0 is a candidate)."""
    from t2ray.adapt.router import pick_labels
    from t2ray.tasks import get_task
    from t2ray.tasks.route import question_of, route_prompt

    model, tok = tiny_model
    router = Router(HFEngine(model, tok))
    accuracy = router.calibrate(n=40)
    examples = get_task("route").examples("validation", 40)
    questions = [question_of(e.prompt) for e in examples]
    assert [route_prompt(q) for q in questions] == [e.prompt for e in examples]
    scores = router.scores(questions)
    never = sum(p == e.answer for p, e in zip(pick_labels(scores, router.categories, 0.0),
                                              examples)) / len(examples)
    assert accuracy >= never and 0.0 <= router.threshold < 1.0
    assert accuracy == sum(p == e.answer for p, e in zip(router.pick(scores), examples)) / 40
