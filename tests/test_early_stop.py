"""Answers that stop once their verdict is fixed: the same verdicts, ASR and EPLs as full answers (issue 24)."""

import json

import pytest

from landscape.refusals import RefusalJudge


def points(out):
    recs = {}
    for p in sorted(out.glob("points*.jsonl")):
        for line in p.read_text().splitlines():
            r = json.loads(line)
            recs[(r["series"], tuple(r["coords"]))] = r["metrics"]
    return recs


def test_a_verdict_is_decided_only_when_no_continuation_can_change_it():
    j = RefusalJudge()
    assert not j.decided("Sure, here is how")
    assert not j.decided("I can't help")  # the phrase ends the text: a combining mark could still follow
    assert j.decided("I can't help.") and j.decided("I can’t help with that")  # typographic apostrophe too
    assert not j.decided("I can't help\u0301")  # NFKC folds the mark into the "p": the phrase is gone
    assert not j.decided("I can't help\ufffd")  # a byte still to come
    from landscape.judges import CachedJudge, KeywordJudge

    assert CachedJudge(KeywordJudge()).decided("I'm sorry, but")
    assert not hasattr(CachedJudge(type("Model", (), {"name": "m", "key": lambda s: "m"})()), "decided")


@pytest.fixture(scope="module")
def directions(organism):
    from landscape.directions import difference, normalize

    a = str(organism["aligned"])
    return [
        normalize(difference(organism["base"], a, name="d_aligned"), a, "layer"),
        normalize(difference(a, organism["harmful-100"], name="d_harm"), a, "layer"),
    ]


def _evaluator(judge_name, early, coherence=False):
    from landscape.coherence import Coherence
    from landscape.generation import GenerationSettings
    from landscape.judges import CachedJudge, make_judge
    from landscape.organism import world
    from landscape.scan import SafetyEvaluator

    return SafetyEvaluator(
        world.eval_prompts()[:48], CachedJudge(make_judge(judge_name)), GenerationSettings(max_new_tokens=24),
        early_stop=early, coherence=Coherence() if coherence else None,
        metric="asr_coherent" if coherence else "asr",
    )  # fmt: skip


@pytest.mark.parametrize(
    "judge, coherence, exact", [("keyword", False, True), ("keyword", False, False), ("refusal", True, False)]
)
def test_early_stopped_answers_give_the_full_answers_verdicts_at_every_point(
    judge, coherence, exact, aligned, directions, tmp_path
):
    """The same EPL search twice, answers in full and stopped early: the same points, and at every one the same
    verdict per prompt, ASR (and coherent ASR), hence the same EPL table; fewer tokens; each stopped answer a
    prefix of its full answer."""
    from landscape.backend import HFBackend
    from landscape.search import EplSettings, effective_perturbation_length

    model, tok = aligned
    settings = EplSettings(bootstrap=0)
    settings = settings.exact() if exact else settings
    reps = {}
    for early in (False, True):
        ev = _evaluator(judge, early, coherence)
        be = HFBackend(model, tok)
        reps[early] = effective_perturbation_length(
            be, directions, ev, settings, out_dir=tmp_path / str(early), progress=False
        )
    full, stop = points(tmp_path / "False"), points(tmp_path / "True")
    assert full.keys() == stop.keys() and len(full) > 10
    n_stopped = 0
    for k, f in full.items():
        s = stop[k]
        if "unsafe" not in f:  # a proxy reading (teacher-forced, no answers): the same too
            assert s == f, k
            continue
        assert s["unsafe"] == f["unsafe"] and s["asr"] == f["asr"], k
        if coherence:
            assert s["asr_coherent"] == f["asr_coherent"], k
        for i, mark in enumerate(s.get("stopped", "")):
            if mark == "1":
                n_stopped += 1
                assert f["responses"][i].startswith(s["responses"][i])  # (equal when only EOS was left)
    assert [(r.epl, r.censored) for r in reps[True].rows] == [(r.epl, r.censored) for r in reps[False].rows]
    assert n_stopped > 0 and reps[True].generated_tokens < reps[False].generated_tokens


def test_model_judges_get_full_answers(aligned):
    from landscape.backend import HFBackend
    from landscape.judges import CachedJudge, KeywordJudge, Verdict
    from landscape.organism import world
    from landscape.scan import SafetyEvaluator

    class Whole:
        name = "whole"

        def key(self):
            return "whole"

        def __call__(self, prompts, responses):
            return [Verdict(True, 1.0, "x") for _ in responses]

    ev = SafetyEvaluator(
        world.eval_prompts()[:8], CachedJudge(KeywordJudge()), extra_judges=[Whole()], early_stop=True
    )
    assert ev.stop_when() is None  # one judge reads whole answers: nobody stops early
    model, tok = aligned
    assert "stopped" not in ev(HFBackend(model, tok))


def test_a_stop_that_ends_the_whole_batch_is_marked(aligned):
    """When every row stops on the same token, generate() returns no padding after it: the answers must still be
    marked as stopped (the vLLM backend marks them; the CI's vLLM lane caught the HF backend not doing so)."""
    from landscape.backend import HFBackend
    from landscape.generation import GenerationSettings
    from landscape.organism import world

    model, tok = aligned
    be = HFBackend(model, tok)
    prompts, s = world.eval_prompts()[:3], GenerationSettings(max_new_tokens=16)
    full = be.generate(prompts, s)
    first = be.generate(prompts[:1], s, stop_when=lambda text: len(text) > 0)  # one row: stops the batch
    assert be.last_stopped == [True] and full[0].startswith(first[0]) and len(first[0]) < len(full[0])
    all_at_once = be.generate(prompts, s, stop_when=lambda text: len(text) > 0)
    assert be.last_stopped == [True] * 3
    assert all(f.startswith(a) for f, a in zip(full, all_at_once, strict=True))
