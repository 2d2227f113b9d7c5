"""The evaluator against a hand-made predictions file with hand-computed metrics, and its errors."""

import json
import pathlib

import pytest

from cu_scale.cli import main
from cu_scale.evaluation.predictions import PredictionsError, evaluate_predictions, prediction_record, read_predictions, write_predictions

GOLDEN = pathlib.Path(__file__).parent / "data" / "golden_predictions.jsonl"

# By hand, the IoU of each line with ground truth:
#   q1 [0,10] vs [0,10]: 1;   q2 [0,10] vs [5,15]: 5/15 = 1/3;   q3 [2,4] vs [0,8]: 2/8 = 0.25;
#   q4 [0,6] vs [2,10] clipped to the 8 s video = [2,8]: 4/8 = 0.5 (unclipped it would be 4/10);
#   q5 [10,20] vs [0,5]: 0;   q6 has no ground truth and is not scored.
# R@0.3 = 3/5, R@0.5 = 2/5, R@0.7 = 1/5, mIoU = (1 + 1/3 + 0.25 + 0.5 + 0)/5 = 0.41667.
EXPECTED = {"R@0.3": 60.0, "R@0.5": 40.0, "R@0.7": 20.0, "mIoU": 100 * (1 + 1 / 3 + 0.25 + 0.5) / 5}


def test_golden_file_gives_the_hand_computed_metrics():
    metrics = evaluate_predictions(read_predictions(GOLDEN))
    assert metrics["scored"] == 5 and metrics["predictions"] == 6
    for key, value in EXPECTED.items():
        assert metrics[key] == pytest.approx(value, abs=1e-9), key


def test_cu_scale_evaluate_prints_and_writes_json(capsys):
    assert main(["evaluate", str(GOLDEN)]) == 0
    out = capsys.readouterr().out
    assert "5 of 6 predictions have ground truth" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("all queries "))
    assert row.split()[2:] == ["60.00", "40.00", "20.00", "41.67"]
    assert "no R@5" in out  # one span per query
    assert main(["evaluate", str(GOLDEN), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mIoU"] == pytest.approx(EXPECTED["mIoU"])


def test_write_then_read_round_trip(tmp_path):
    records = [prediction_record("s1", "v1", "a query", (1.0, 2.5), (float("nan"), float("nan")), 12.0), prediction_record("s2", "v1", "q", (0, 3), (0, 4), 12.0)]
    path = write_predictions(records, tmp_path / "out" / "p.jsonl")
    back = read_predictions(path)
    assert back[0]["gt"] is None and back[1]["gt"] == [0.0, 4.0] and back[0]["pred"] == [1.0, 2.5]
    assert evaluate_predictions(back)["mIoU"] == pytest.approx(75.0)


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", ":2: not valid JSON"),
        ('{"sample_id": "x"}', ":2: the field 'pred' is missing"),
        ('{"sample_id": "x", "pred": [3, 1], "gt": [0, 1]}', ":2: pred ends before it starts"),
        ('{"sample_id": "x", "pred": [0, 1], "gt": [0]}', ":2: gt must be [start, end] in seconds"),
        ('{"sample_id": "x", "pred": [0, 1], "gt": [0, 1], "duration": -3}', ":2: duration must be a positive number"),
        ('{"sample_id": "x", "pred": [0, 1], "spans": [[0, 1, 0.5], [2, 1, 0.1]]}', ":2: spans[1] must be [start, end, score] with start ≤ end"),
        ('{"sample_id": "x", "pred": [0, 1], "spans": []}', ":2: spans must be a non-empty list"),
    ],
)
def test_a_bad_line_is_reported_with_file_and_line(tmp_path, capsys, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(GOLDEN.read_text().splitlines()[0] + "\n" + line + "\n")
    with pytest.raises(PredictionsError, match=message.replace("[", r"\[")):
        read_predictions(path)
    assert main(["evaluate", str(path)]) == 2
    assert f"{path}{message}" in capsys.readouterr().err


# Ranked spans, by hand (ground truth [0, 10] for both queries, no duration):
#   q1 spans [20,30] (IoU 0), [0,6] (0.6), [0,9] (0.9), [0,1], [0,1], [0,10] (1, sixth: not counted)
#      R@1: IoU 0; best of five 0.9 → R@5,0.5 and R@5,0.7 hit
#   q2 spans [0,5] (0.5), [5,15] (1/3)            R@1: 0.5; best of two 0.5 → R@5,0.5 hits, R@5,0.7 misses
# R@5,0.5 = 100, R@5,0.7 = 50; R@1 mIoU = 25. q1 is single-frame, q2 clip: each kind's own metrics.
RANKED = [
    prediction_record("q1", "v", "a", (20, 30), (0, 10), 40.0, spans=([20, 0, 0, 0, 0, 0], [30, 6, 9, 1, 1, 10], [0.9, 0.8, 0.7, 0.2, 0.1, 0.05]), label_kind="single-frame"),
    prediction_record("q2", "v", "b", (0, 5), (0, 10), 40.0, spans=([0, 5], [5, 15], [0.6, 0.3]), label_kind="clip"),
]


def test_ranked_spans_give_r_at_5_and_label_kinds_their_own_metrics_by_hand(tmp_path):
    metrics = evaluate_predictions(RANKED)
    assert metrics["R@5,0.5"] == pytest.approx(100) and metrics["R@5,0.7"] == pytest.approx(50)
    assert metrics["mIoU"] == pytest.approx(25) and metrics["R@0.5"] == pytest.approx(50)
    assert metrics["by_label_kind"]["single-frame"]["mIoU"] == pytest.approx(0) and metrics["by_label_kind"]["clip"]["mIoU"] == pytest.approx(50)
    one_span = [dict(r, spans=r["spans"][:1]) for r in RANKED]
    assert "R@5,0.5" not in evaluate_predictions(one_span)  # the field reports R@5 for models that rank spans


def test_parquet_predictions_hold_the_same_records_as_json_lines(tmp_path):
    from cu_scale.evaluation.predictions import PredictionsWriter

    for path, parquet in ((tmp_path / "p.jsonl", False), (tmp_path / "p.parquet", True)):
        writer = PredictionsWriter(path, parquet=parquet)
        for record in RANKED:
            writer.write(record)
        writer.close()
    assert read_predictions(tmp_path / "p.parquet") == read_predictions(tmp_path / "p.jsonl")
    assert evaluate_predictions(read_predictions(tmp_path / "p.parquet")) == evaluate_predictions(RANKED)
