"""wildlib.io.progress: the bar every long loop runs behind, and its absence where tqdm is missing."""

from wildlib import io


def test_progress_draws_a_bar_and_yields_every_item(capsys):
    assert list(io.progress(range(5), "bits sweep")) == [0, 1, 2, 3, 4]
    assert "bits sweep: 100%" in capsys.readouterr().err


def test_progress_is_the_items_themselves_when_off_or_without_tqdm(monkeypatch):
    items = [1, 2]
    assert io.progress(items, "x", enabled=False) is items
    monkeypatch.setattr(io, "tqdm", None)  # the ONNX-Runtime-only environment of wildlib.detect
    assert io.progress(items, "x") is items
