"""The feature simulator: determinism, events visible where they happen, the generic path."""

import numpy as np
import pytest

from cu_scale.data.demo import generate_demo_corpus
from cu_scale.data.records import Event, Sample, Video
from cu_scale.data.simulator import FeatureSimulator, SimulatorSettings, content_words, events_from_moments

SETTINGS = SimulatorSettings(feature_dim=64, max_steps=40, steps_per_second=2.0, noise=0.1)


def _video(video_id="v", events=(Event(("c001",), 5.0, 10.0),)):
    return Video(video_id, 20.0, "test", events=events, scene="Kitchen")


def test_render_is_deterministic_and_shaped():
    a = FeatureSimulator(SETTINGS).render(_video())
    b = FeatureSimulator(SETTINGS).render(_video())
    assert a.shape == (40, 64) and a.dtype == np.float16 and (a >= 0).all()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, FeatureSimulator(SETTINGS).render(_video("w")))


def test_steps_follow_duration_up_to_max_steps():
    simulator = FeatureSimulator(SETTINGS)
    assert simulator.num_steps(3.2) == 7 and simulator.num_steps(100.0) == 40 and simulator.num_steps(0.01) == 1


def test_an_event_changes_the_features_inside_its_interval_only():
    simulator = FeatureSimulator(SETTINGS)
    with_event = simulator.render(_video()).astype(np.float32)
    without = simulator.render(_video(events=())).astype(np.float32)
    change = np.linalg.norm(with_event - without, axis=1)
    times = (np.arange(40) + 0.5) * 0.5
    inside, outside = change[(times > 6) & (times < 9)], change[(times < 3) | (times > 12)]
    assert inside.min() > 10 * outside.max()


def test_the_same_action_looks_alike_across_videos():
    simulator = FeatureSimulator(SETTINGS)
    cosine = lambda x, y: float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))
    def event_delta(video_id, concept):
        base = simulator.render(_video(video_id, events=())).astype(np.float32)
        feats = simulator.render(_video(video_id, events=(Event((concept,), 5.0, 10.0),))).astype(np.float32)
        return (feats - base)[12:18].mean(0)
    same = cosine(event_delta("v1", "c001"), event_delta("v2", "c001"))
    different = cosine(event_delta("v1", "c001"), event_delta("v2", "c050"))
    assert same > 0.9 and same > different + 0.3


def test_noise_level_is_the_parameter_it_says():
    quiet = FeatureSimulator(SimulatorSettings(feature_dim=64, noise=0.0)).render(_video(events=()))
    loud = FeatureSimulator(SimulatorSettings(feature_dim=64, noise=2.0)).render(_video(events=()))
    assert np.std(np.diff(quiet.astype(np.float32), axis=0)) < 1e-3 < np.std(np.diff(loud.astype(np.float32), axis=0))


def test_generic_path_builds_events_from_the_words_of_each_moment():
    assert content_words("The person is Opening the doors.") == ("open", "door")
    samples = [
        Sample("a", "v", "A man opens the door.", "train", "x", gt=(1.0, 4.0)),
        Sample("b", "v", "someone opening a door quickly", "train", "x", gt=(1.0, 4.0)),
        Sample("c", "v", "he washes dishes", "train", "x", gt=(6.0, 9.0)),
        Sample("d", "v", "no moment known", "test", "x"),
    ]
    assert events_from_moments(samples) == (Event(("open", "door", "quickly"), 1.0, 4.0), Event(("wash", "dish"), 6.0, 9.0))


def test_the_two_demo_worlds_have_the_shapes_they_say():
    for world, durations, max_actions, max_sentences, median_fraction in (("short", (15, 45), 4, 3, (0.15, 0.35)), ("long", (120, 420), 20, 8, (0.02, 0.07))):
        videos, samples = generate_demo_corpus(200, seed=1, world=world)
        assert all(durations[0] <= v.duration <= durations[1] and 2 <= len(v.events) <= max_actions for v in videos.values())
        per_video = np.bincount(np.unique([s.video_id for s in samples], return_inverse=True)[1])
        assert per_video.max() <= max_sentences
        lengths = np.array([s.gt[1] - s.gt[0] for s in samples])
        fractions = lengths / np.array([videos[s.video_id].duration for s in samples])
        assert median_fraction[0] < np.median(fractions) < median_fraction[1], world
        assert all(0 <= s.gt[0] < s.gt[1] <= videos[s.video_id].duration for s in samples)
    assert lengths.min() >= 3 - 1e-6 and lengths.max() <= 40 + 1e-6  # the long world's log-uniform 3-40 s
    with pytest.raises(ValueError, match="world: the demo worlds are"):
        generate_demo_corpus(10, world="huge")
