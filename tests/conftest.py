import os
from pathlib import Path

import pytest
from PIL import Image

from wildlib import synth

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory) -> Path:
    """A small embedded set (about 8% of the paper's counts), rendered once per test session."""
    out = tmp_path_factory.mktemp("data") / "savanna_smoke"
    synth.generate(out, synth.SynthConfig(seed=3, scale=0.08), progress=False)
    return out


def voc_xml(filename="a.jpg", size=(64, 48), objects=(("zebra", (5, 6, 30, 40)),)) -> str:
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in objects
    )
    return (f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width>"
            f"<height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>")


@pytest.fixture
def voc_dir(tmp_path) -> Path:
    """A tiny valid VOC folder: two train images, one valid image, 64x48 px."""
    root = tmp_path / "voc"
    (root / "annotations").mkdir(parents=True)
    (root / "images").mkdir()
    for name in ("img1", "img2", "img3"):
        Image.new("RGB", (64, 48), (120, 100, 60)).save(root / "images" / f"{name}.jpg")
        (root / "annotations" / f"{name}.xml").write_text(voc_xml(f"{name}.jpg"))
    (root / "train.txt").write_text("img1\nimg2\n")
    (root / "valid.txt").write_text("img3\n")
    return root
