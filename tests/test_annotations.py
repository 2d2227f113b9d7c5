"""Every reader on the real annotation files, and malformed input naming file and line."""

import json

import pytest

from cu_scale.data.annotations import (
    AnnotationError,
    read_activitynet,
    read_charades_classes,
    read_charades_sta,
    read_charades_v1,
)


def test_charades_sta_real_files(datasets):
    train = read_charades_sta(datasets / "charades_sta" / "charades_sta_train.txt", "train")
    test = read_charades_sta(datasets / "charades_sta" / "charades_sta_test.txt", "test")
    assert (len(train), len(test)) == (12408, 3720)
    assert (len({s.video_id for s in train}), len({s.video_id for s in test})) == (5338, 1334)
    first = train[0]  # AO8RW 0.0 6.9##a person is putting a book on a shelf.
    assert (first.video_id, first.gt, first.query) == ("AO8RW", (0.0, 6.9), "a person is putting a book on a shelf.")
    assert first.partial_kind == "none" and first.partial is None
    assert first.source.endswith("charades_sta_train.txt:1") and first.sample_id == "train-000001"


def test_charades_sta_glance_real_files(datasets):
    train = read_charades_sta(datasets / "charades_sta" / "glance" / "charades_sta_train.txt", "train", glance=True)
    test = read_charades_sta(datasets / "charades_sta" / "glance" / "charades_sta_test.txt", "test", glance=True)
    assert (len(train), len(test)) == (12408, 3720)
    assert train[0].partial == (1.0, 1.0) and train[0].partial_kind == "single-frame"
    # The ViGA glance always lies inside its moment.
    assert all(s.gt[0] <= s.partial[0] <= s.gt[1] for s in train + test)


def test_charades_v1_and_classes_real_files(datasets):
    train = read_charades_v1(datasets / "charades_sta" / "Charades_v1_train.csv")
    test = read_charades_v1(datasets / "charades_sta" / "Charades_v1_test.csv")
    assert (len(train), len(test)) == (7985, 1863)
    video = train["46GP8"]  # c092 11.90 21.20;c147 0.00 12.60, length 24.83
    assert video.duration == 24.83 and video.scene == "Kitchen"
    assert [(e.concepts, e.start, e.end) for e in video.events] == [(("c092",), 11.9, 21.2), (("c147",), 0.0, 12.6)]
    classes = read_charades_classes(datasets / "charades_sta" / "Charades_v1_classes.txt")
    assert len(classes) == 157 and classes["c000"] == "Holding some clothes"


@pytest.mark.parametrize("split,samples,videos", [("train", 37421, 10009), ("val_1", 17505, 4917), ("val_2", 17031, 4885)])
def test_activitynet_real_files(datasets, split, samples, videos):
    read, by_video = read_activitynet(datasets / "activitynet_captions" / f"{split}.json", split)
    assert (len(read), len(by_video)) == (samples, videos)
    assert all(not s.query.startswith(" ") for s in read)


@pytest.mark.parametrize("split,samples", [("val_1", 17505), ("val_2", 17031)])
def test_activitynet_glance_real_files(datasets, split, samples):
    read, _ = read_activitynet(datasets / "activitynet_captions" / "glance" / f"{split}.json", split, glance=True)
    assert len(read) == samples and all(s.partial_kind == "single-frame" for s in read)
    assert all(s.gt[0] <= s.partial[0] <= s.gt[1] for s in read)


@pytest.mark.parametrize(
    "line,glance,message",
    [
        ("AO8RW 0.0##a person", False, "expected 'VIDEO START END##SENTENCE'"),
        ("AO8RW 0.0 x##a person", False, "end 'x' is not a number"),
        ("AO8RW 0.0 6.9##a person", True, "expected 'VIDEO START END##GLANCE##SENTENCE'"),
        ("AO8RW 0.0 6.9##nan##a person", True, "glance 'nan' is not a finite number"),
    ],
)
def test_charades_sta_malformed_line_names_file_and_line(tmp_path, line, glance, message):
    path = tmp_path / "sta.txt"
    path.write_text("Y6R7T 20.8 30.0##1.0##person plays.\n" if glance else "Y6R7T 20.8 30.0##person plays.\n")
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(AnnotationError, match=f"{path}:2: .*{message}"):
        read_charades_sta(path, "train", glance=glance)


def test_charades_v1_malformed_action_names_line(tmp_path):
    path = tmp_path / "v1.csv"
    path.write_text("id,scene,actions,length\nAAAAA,Kitchen,c001 1.0 2.0,10\nBBBBB,Kitchen,c001 1.0,10\n")
    with pytest.raises(AnnotationError, match=f"{path}:3: action 'c001 1.0' is not 'CLASS START END'"):
        read_charades_v1(path)


def test_activitynet_malformed_entries_name_the_key(tmp_path):
    path = tmp_path / "anet.json"
    path.write_text(json.dumps({"v_a": {"duration": 10, "timestamps": [[1, 2]], "sentences": ["x", "y"]}}))
    with pytest.raises(AnnotationError, match=f"{path}:v_a: 1 timestamps but 2 sentences"):
        read_activitynet(path, "train")
    path.write_text(json.dumps({"v_a": {"duration": 10, "timestamps": [[1, 2]], "sentences": ["x"]}}))
    with pytest.raises(AnnotationError, match="needs one 'glance' per sentence"):
        read_activitynet(path, "val_1", glance=True)
    path.write_text('{"v_a": {"duration": 10,\n "timestamps": [[1, 2]] "sentences": ["x"]}}')
    with pytest.raises(AnnotationError, match=f"{path}:2: not valid JSON"):
        read_activitynet(path, "train")
