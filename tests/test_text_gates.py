"""Text gates, the MiniLM embedder, stratified sampling and near-duplicate removal (no LLM needed)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from conftest import write_recipe

from pipeline.adapters.text_embed_minilm import MiniLMEmbedder
from pipeline.catalogs import load_catalogs
from pipeline.recipe import load_recipe
from pipeline.records import EMOTIONS, Dialogue, Scenario, Turn
from pipeline.stages.s1_scenarios import balance_report, stratified_cell
from pipeline.stages.s2_text_gates import InvalidOutput, TextGates, check_repetition, check_role
from pipeline.stages.s6_dedup import NearDuplicateFilter, jaccard, shingles


@pytest.fixture(scope="module")
def gates(tmp_path_factory: pytest.TempPathFactory) -> TextGates:
    checks = {"emotion_check": True, "response_check": True, "situation_check": True}  # conftest switches them off
    recipe = load_recipe(write_recipe(tmp_path_factory.mktemp("gates"), text_gates=checks))
    return TextGates(recipe.text_gates, recipe.llm, load_catalogs(recipe).emotion_sentences)


def test_numpy_minilm_matches_transformers() -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from pipeline.adapters.text_embed_minilm import model_dir

    sentences = ["My dog died this morning and I cannot stop crying.", "That sounds so hard.", "ok"]
    ours = MiniLMEmbedder().encode(sentences)
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir()))
    model = transformers.AutoModel.from_pretrained(str(model_dir())).eval()
    batch = tok(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    ref = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()
    assert ours.shape == (3, 384)
    np.testing.assert_allclose(ours, ref, atol=1e-4)


# Clear held-out sentences (not the reference sentences): the embedding check must recognise them.
HELD_OUT = {
    "neutral": "I cleaned the garage on Saturday and then watched a movie.",
    "happy": "We got the keys to our first house today and I am over the moon!",
    "sad": "My cat died this morning and the house feels so empty.",
    "angry": "They towed my car for no reason and I am absolutely livid!",
    "fearful": "My test results come tomorrow and I am terrified of what they will say.",
    "surprised": "I just found out I have a twin brother, I am completely stunned!",
    "disgusted": "The hotel sheets had stains all over them and the smell was revolting.",
}


def test_emotion_check_recognises_clear_sentences_and_rejects_mismatches(gates: TextGates) -> None:
    for emotion, text in HELD_OUT.items():
        gates.check(text, "user", emotion, [])  # passes for its own emotion (within the recipe's margin)
    closest = {e: gates.emotions[int(gates.emotion_scores(t).argmax())] for e, t in HELD_OUT.items()}
    assert sum(e == c for e, c in closest.items()) >= 6, closest  # "over the moon" reads as neutral
    with pytest.raises(InvalidOutput) as err:
        gates.check(HELD_OUT["angry"], "user", "happy", [])
    assert err.value.reason == "text_emotion_mismatch"
    assert "closest angry" in str(err.value)


def test_response_check(gates: TextGates) -> None:
    user = HELD_OUT["sad"]
    gates.check("I am so sorry about your cat, losing a pet leaves a real hole at home.", "assistant", "sad", [user])
    with pytest.raises(InvalidOutput) as err:
        gates.check("The quarterly tax forms are due at the end of the fiscal year.", "assistant", "sad", [user])
    assert err.value.reason == "text_unresponsive"


@pytest.mark.parametrize(
    ("text", "earlier", "reason"),
    [
        ("Je suis vraiment très triste aujourd'hui, mon chien est mort.", [], "text_not_plain_english"),
        ("Estoy muy cansado y triste por todo esto hoy en mi casa.", [], "text_wrong_language"),
        ("I am so so so so sad about my dog today.", [], "text_degenerate"),
        ("I miss him I miss him I miss him I miss him I miss him.", [], "text_degenerate"),
        ("As an AI I understand how you feel about this.", [], "text_role_leak"),
        ("That must be really hard for you and your family.", ["That must be really hard for you and your family."],
         "text_repeats_previous"),
    ],
)  # fmt: skip
def test_text_gates_reject_with_the_right_reason(gates: TextGates, text: str, earlier: list[str], reason: str) -> None:
    with pytest.raises(InvalidOutput) as err:
        gates.check(text, "assistant", None, earlier)
    assert err.value.reason == reason


@pytest.mark.parametrize(
    "text",
    [
        "I'm so sorry to hear about your self-worth, that sounds awful.",
        "That must be so hard for you, losing the job like that.",
        "How are you feeling about the move now?",
        "It sounds like you had a really rough day at work.",
    ],
)
def test_role_check_rejects_a_user_turn_that_speaks_as_the_listener(text: str) -> None:
    with pytest.raises(InvalidOutput) as err:
        check_role(text)
    assert err.value.reason == "text_wrong_role"


def test_role_check_lets_the_user_tell_their_own_story() -> None:
    for text in [
        *HELD_OUT.values(),
        "I am so sorry I missed my sister's wedding, I feel terrible about it.",
        "I think it must be my fault that he left.",
    ]:
        check_role(text)


def test_situation_check(gates: TextGates) -> None:
    situation = "My bike was stolen from outside the library in broad daylight."
    gates.check("Someone took my bike right outside the library today and I am so mad.", "user", None, [], situation)
    with pytest.raises(InvalidOutput) as err:
        gates.check("The quarterly tax forms are due at the end of the fiscal year.", "user", None, [], situation)
    assert err.value.reason == "text_off_situation"
    gates.check("The quarterly tax forms are due at the end of the fiscal year.", "assistant", None, [], situation)


def test_repetition_allows_normal_text() -> None:
    check_repetition("I had to give away my dog today because of the move.", ["I feel sad."], 0.3, 0.6)


def test_stratified_design_balances_emotion_and_topic() -> None:
    n_e, n_t, seed = 7, 48, 5
    cells = [stratified_cell(i, n_e, n_t, seed) for i in range(2 * n_e * n_t)]
    assert len(set(cells[: n_e * n_t])) == n_e * n_t  # each round visits every cell once
    assert Counter(cells) == Counter({c: 2 for c in set(cells)})
    for start in range(0, 200, n_e):  # every run of E consecutive indices covers all emotions
        assert {e for e, _ in cells[start : start + n_e]} == set(range(n_e))
    topics = Counter(t for _, t in cells[:200])
    assert max(topics.values()) - min(topics.values()) <= 1
    assert cells != [stratified_cell(i, n_e, n_t, seed + 1) for i in range(len(cells))]


def test_balance_report_measures_share_differences() -> None:
    requested = {f"{e}|t{k}": 2 for e in EMOTIONS for k in range(3)}
    report = balance_report({c: 1 for c in requested}, requested, 0.05)  # uniform losses keep the shares
    assert report["emotion_max_share_diff"] == 0 and report["topic_max_share_diff"] == 0
    assert report["within_tolerance"]
    skewed = {**requested, **{f"sad|t{k}": 0 for k in range(3)}}  # every sad dialogue rejected
    report = balance_report(skewed, requested, 0.05)
    assert report["emotion_max_share_diff"] == pytest.approx(1 / 7, abs=1e-3)  # sad: 1/7 of requested, 0 kept
    assert report["topic_max_share_diff"] == 0
    assert not report["within_tolerance"]


def _dialogue(index: int, texts: list[str]) -> Dialogue:
    scenario = Scenario("t", "s", None, "sad", "low", "spk-01", "asst-1", 1)  # type: ignore[arg-type]
    d = Dialogue(id=f"dlg-0-{index:06d}", index=index, shard=0, seed=0, scenario=scenario)
    d.turns = [Turn(f"{d.id}-t{n:02d}", "user" if n % 2 else "assistant", t, "sad", "low", "spk-01")
               for n, t in enumerate(texts, start=1)]  # fmt: skip
    return d


def test_near_duplicates_are_removed_exactly_by_jaccard() -> None:
    base = ["I lost my job today and I do not know how to tell my family about it.",
            "I am so sorry, that is a heavy thing to carry. What worries you most about telling them?"]  # fmt: skip
    near = [base[0], base[1].replace("most", "the most")]
    other = ["My sister is having a baby and I am going to be an aunt!", "That is wonderful news, congratulations!"]
    assert jaccard(shingles(base), shingles(near)) >= 0.5
    assert jaccard(shingles(base), shingles(other)) < 0.1
    dedup = NearDuplicateFilter(0.5)
    kept = [dedup.apply(_dialogue(i, t)) for i, t in enumerate([base, other, near, base])]
    assert [d.kept for d in kept] == [True, True, False, False]
    assert kept[2].reject is not None and kept[2].reject.reason == "near_duplicate"
    assert kept[2].reject.measured["duplicate_of"] == "dlg-0-000000"
    # a filter seeded from completed shards (a resume) reaches the same verdict
    resumed = NearDuplicateFilter(0.5)
    resumed.add("dlg-0-000000", base)
    assert not resumed.apply(_dialogue(2, near)).kept
