"""Every registered detector through the same checks (a river-style conformance suite).

Each detector runs inside the real detection pass (:func:`detect_family`: daily baselines, masking, deviations) on
seeded log-normal panels: stationary input gives no episode, a sustained +50 % shift gives one episode near its
onset, answers are deterministic, and a config saved to JSON and loaded back gives the same answer.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from support.panels import DAY, START_S, lognormal_panel

from spanprism.attribution.detection import (
    DETECTORS,
    Detector,
    Deviations,
    create_detector,
    detector_from_dict,
    detector_names,
)
from spanprism.attribution.detection.episodes import DetectionConfig, Episode, FamilyPanel, detect_family

NAMES = detector_names()
ONSET = 8 * DAY + 100  # 08:20 on day 8


def _detect(detector: Detector, panel: FamilyPanel) -> list[Episode]:
    return detect_family(panel, DetectionConfig(detector=detector), eval_from_col=DAY)[0]


def _shifted() -> FamilyPanel:
    return lognormal_panel(10, seed=12, n_series=2, shift=(ONSET, 10 * DAY, 1.5))


def _bucket(when) -> int:
    return int(when.timestamp() - START_S) // 300


def test_registry():
    assert "cusum" in NAMES and tuple(DETECTORS) == NAMES
    assert DetectionConfig().detector == create_detector("cusum")
    with pytest.raises(KeyError, match="unknown detector"):
        create_detector("isolation_forest")


@pytest.mark.parametrize("name", NAMES)
def test_entry_names_itself_and_rejects_unknown_options(name: str):
    detector = create_detector(name)
    assert detector.name == name and isinstance(detector.version, int)
    with pytest.raises(TypeError, match="unknown options"):
        create_detector(name, no_such_option=1.0)


@pytest.mark.parametrize("name", NAMES)
def test_stationary_input_has_no_episode(name: str):
    assert _detect(create_detector(name), lognormal_panel(10, n_series=4, seed=11)) == []


@pytest.mark.parametrize("name", NAMES)
def test_sustained_shift_is_one_episode_near_its_onset(name: str):
    episodes = _detect(create_detector(name), _shifted())
    assert sorted(e.series_key for e in episodes) == ["s0", "s1"], "one episode per shifted series"
    for ep in episodes:
        assert abs(_bucket(ep.start) - ONSET) <= 3
        assert 0 <= _bucket(ep.detected_at) - ONSET <= 12  # within the hour
        assert ep.status == "open" and ep.change_pct == pytest.approx(50.0, abs=15.0)


@pytest.mark.parametrize("name", NAMES)
def test_answers_are_deterministic(name: str):
    first, second = _detect(create_detector(name), _shifted()), _detect(create_detector(name), _shifted())
    assert first and first == second


@pytest.mark.parametrize("name", NAMES)
def test_config_saved_and_loaded_gives_the_same_answer(name: str):
    detector = create_detector(name)
    loaded = detector_from_dict(json.loads(json.dumps(detector.to_dict())))
    assert loaded == detector and type(loaded) is type(detector)
    assert _detect(loaded, _shifted()) == _detect(detector, _shifted())
    for f in dataclasses.fields(detector.config):  # every option survives the trip, not only the defaults
        changed = create_detector(name, **{f.name: getattr(detector.config, f.name) * 2 + 1})
        again = detector_from_dict(json.loads(json.dumps(changed.to_dict())))
        assert again == changed and getattr(again.config, f.name) == getattr(changed.config, f.name)
    with pytest.raises(ValueError, match="saved"):
        detector_from_dict({**detector.to_dict(), "version": detector.version + 1})


@pytest.mark.parametrize("name", NAMES)
def test_run_checks_shapes_and_order(name: str):
    stats = ("a", "b")
    run = create_detector(name).start(2, stats, grain_s=300)

    def block(t0: int, n: int, s: int = 2) -> Deviations:
        z = np.zeros((s, 2, n))
        return Deviations(t0, stats, z, z, np.ones_like(z), np.full((s, n), 50.0))

    run.update(block(0, 5))
    with pytest.raises(ValueError, match="before"):
        run.update(block(3, 2))
    with pytest.raises(ValueError, match="series, stats, buckets"):
        run.update(block(5, 2, s=3))
    run.update(block(5, 0))
    assert run.spans() == []
