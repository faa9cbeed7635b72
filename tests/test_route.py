"""The routing task behind the classifier expert: seen train data only, never the unseen families."""

from t2ray.tasks import CORE_SEEN, CORE_UNSEEN, get_task, list_tasks
from t2ray.tasks.route import CATEGORIES, route_prompt


def test_route_items_come_from_seen_train_splits_only():
    route = get_task("route")
    items = route.examples("train") + route.examples("validation") + route.examples("test")
    allowed = {e.uid for n in CORE_SEEN for e in get_task(n).examples("train")}
    allowed |= {e.uid for t in list_tasks("instruct") if t.seen for e in t.examples("train", 40)}
    forbidden = {e.uid for n in CORE_UNSEEN for s in ("train", "validation", "test")
                 for e in get_task(n).examples(s)}
    forbidden |= {e.uid for n in CORE_SEEN for s in ("validation", "test")
                  for e in get_task(n).examples(s)}
    off_topic = [e for e in items if e.meta["source_task"] == "off-topic"]
    sources = {e.meta["source_uid"] for e in items} - {e.meta["source_uid"] for e in off_topic}
    assert sources <= allowed and not sources & forbidden
    assert {e.answer for e in items} == set(CATEGORIES)
    for e in items[:200]:
        want = e.meta["source_task"] if e.meta["source_task"] in CORE_SEEN else "other"
        assert e.answer == want and e.prompt.startswith(route_prompt("")[:20])


def test_route_splits_are_disjoint_by_source_question():
    route = get_task("route")
    by_split = {s: {e.meta["source_uid"] for e in route.examples(s)}
                for s in ("train", "validation", "test")}
    assert not by_split["train"] & by_split["test"]
    assert not by_split["validation"] & by_split["test"]
    assert not by_split["train"] & by_split["validation"]


def test_other_is_taught_on_inputs_that_fit_no_expert():
    """Half of v2's `other` items fit no expert at all (chat, trivia, letters); v1 keeps its
    instruction-only `other` so that its tables stay reproducible."""
    from t2ray.tasks.route import question_of

    items = get_task("route").examples("train")
    other = [e for e in items if e.answer == "other"]
    off_topic = [e for e in other if e.meta["source_task"] == "off-topic"]
    assert 0.25 < len(off_topic) / len(other) < 0.6
    assert all(e.answer == "other" for e in items if e.meta["source_task"] == "off-topic")
    family_words = ("apples", "function", "Answer A", "mapx")
    assert not any(w in question_of(e.prompt) for e in off_topic for w in family_words)
    assert not any(e.meta["source_task"] == "off-topic"
                   for e in get_task("route", "v1").examples("train"))
