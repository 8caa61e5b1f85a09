"""Model resolution: the converted cache is published atomically, whoever converts first."""

from __future__ import annotations

import pytest

from corea_engine.models import _publish


def _folder(path, text):
    path.mkdir()
    (path / "config.json").write_text(text)
    return path


def test_publish_moves_a_finished_conversion_into_place(tmp_path):
    target = tmp_path / "model"
    _publish(_folder(tmp_path / "model.tmp1", "mine"), target)
    assert (target / "config.json").read_text() == "mine"


def test_publish_keeps_the_copy_another_process_finished_first(tmp_path):
    target = _folder(tmp_path / "model", "theirs")
    tmp = _folder(tmp_path / "model.tmp2", "mine")
    _publish(tmp, target)
    assert (target / "config.json").read_text() == "theirs"
    assert not tmp.exists()


def test_publish_still_fails_when_the_target_is_not_a_finished_model(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "junk").write_text("x")  # a non-empty folder without config.json
    with pytest.raises(OSError):
        _publish(_folder(tmp_path / "model.tmp3", "mine"), target)
