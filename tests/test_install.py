"""The patched Detectron2 that tools/install_detectron2.py builds."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("install_detectron2", ROOT / "tools" / "install_detectron2.py")
installer = importlib.util.module_from_spec(spec)
spec.loader.exec_module(installer)


def test_installed_detectron2_is_the_patched_build():
    import detectron2
    import detectron2._C as c

    assert detectron2.__version__ == "0.6"
    assert installer.MARKER in c.__doc__


def test_no_removed_numpy_aliases_or_pillow_constants_left():
    import detectron2

    pkg = Path(detectron2.__file__).parent
    bad = [p for p in pkg.rglob("*.py") if installer.NP_ALIASES.search(p.read_text())]
    assert not bad
    assert "Image.LINEAR" not in (pkg / "data" / "transforms" / "transform.py").read_text()


def test_model_zoo_configs_are_installed():
    from detectron2 import model_zoo

    assert Path(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml")).exists()


def test_patch_refuses_a_tree_it_does_not_know(tmp_path):
    (tmp_path / "detectron2").mkdir()
    (tmp_path / "setup.py").write_text("setup()\n")
    with pytest.raises(installer.PatchError, match="expected 1 occurrence"):
        installer.patch_tree(tmp_path)


def test_numpy_alias_pattern_spares_real_dtypes():
    text = "a = np.int(3); b = np.int64(3); c = np.float32; d = np.bool_; e = np.float"
    assert installer.NP_ALIASES.sub(lambda m: m.group(1), text) == \
        "a = int(3); b = np.int64(3); c = np.float32; d = np.bool_; e = float"


def test_progress_bars_are_widgets_in_jupyterlab():
    """tqdm.auto (training, sweeps, the embedded set's rendering) draws a widget in a notebook
    kernel only when ipywidgets imports; without it tqdm warns "IProgress not found" and prints text."""
    from tqdm.notebook import IProgress

    assert IProgress is not None
