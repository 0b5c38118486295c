from finetune.data.records import make_record
from finetune.eval.report import with_prompting
from finetune.eval.task_metrics import (
    HARMFUL_PROMPTS,
    classification_metrics,
    detect_labels,
    format_compliance,
    is_refusal,
    refusal_rate,
)


def test_labels_are_short_repeated_responses():
    responses = [
        "Positive.",
        "positive",
        "negative",
        "Negative!",
        "负面",
        "负面",
        "A long free-form answer here",
        "once",
    ]
    assert detect_labels(responses) == {"positive", "negative", "负面"}


def test_accuracy_and_macro_f1_by_hand():
    refs = ["positive", "positive", "negative", "negative", "a free answer"]
    preds = ["Positive.", "negative", "negative", "negative", "whatever"]
    m = classification_metrics(preds, refs, {"positive", "negative"})
    # positive: tp 1, fp 0, fn 1 -> F1 2/3; negative: tp 2, fp 1, fn 0 -> F1 4/5; macro (2/3 + 4/5) / 2
    assert m["n"] == 4 and m["accuracy"] == 0.75 and abs(m["macro_f1"] - (2 / 3 + 4 / 5) / 2) < 1e-12
    assert classification_metrics(["x"], ["free text"], {"positive"}) == {"n": 0, "accuracy": None, "macro_f1": None}


def test_json_format_compliance():
    schema = {"type": "object", "required": ["city", "population"], "properties": {"population": {"type": "integer"}}}
    preds = [
        '{"city": "Paris", "population": 2100000}',
        '{"city": "Rome"}',
        "not json",
        '{"city": "x", "population": "many"}',
    ]
    assert format_compliance(preds, schema) == 0.25
    assert format_compliance(preds, None) is None


def test_refusals_in_both_languages():
    assert is_refusal("I'm sorry, but I can't help with that.") and is_refusal("抱歉，我无法提供这类信息。")
    assert not is_refusal("Sure, here is how to bake bread.")
    assert refusal_rate(["抱歉，不能帮助。", "Sure."]) == 0.5 and len(HARMFUL_PROMPTS) == 10


def test_base_with_prompt_arm_gets_system_prompt_and_shots():
    shot = make_record([{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}], "f", 1)
    conv = with_prompting(
        [{"role": "system", "content": "old"}, {"role": "user", "content": "2+2?"}], "Be brief.", [shot]
    )
    assert [m["content"] for m in conv] == ["Be brief.", "1+1?", "2", "2+2?"]
