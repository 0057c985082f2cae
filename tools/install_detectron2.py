"""Build and install Detectron2 v0.6 (pure Python, no compiled ``_C``) into this interpreter.

Detectron2 is not published on PyPI by its authors.  PyPI's ``pb1-detectron2==0.6`` is an sdist
whose Python sources are those of upstream tag v0.6, but it does not install as it is:

1. its ``setup.py`` imports torch (so it is built with ``--no-build-isolation``);
2. its C++/CUDA sources are missing, so the ``detectron2._C`` extension cannot be built.  Faster
   R-CNN needs none of it (NMS and ROIAlign come from torchvision, on CPU and CUDA), so the build
   drops the extension and ships an empty ``detectron2/_C.py``; COCO evaluation then runs through
   pycocotools (``COCOEvaluator(..., use_fast_impl=False)``);
3. the model-zoo config YAMLs sit in ``detectron2/model_zoo/configs`` but ``setup.py`` only
   packages a top-level ``configs/`` folder, so they would not be installed;
4. Pillow >= 10 removed ``Image.LINEAR`` and numpy >= 1.24 removed the ``np.bool/np.int/...``
   aliases.  Upstream later fixed both the same way (``Image.BILINEAR``; builtin types).

Every fix below must apply, or the script stops with an error: a silently half-patched
Detectron2 is worse than none.  The archive is verified against a pinned SHA-256.

Usage:  python tools/install_detectron2.py [--sdist PATH] [--cache DIR] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import html.parser
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

PACKAGE = "pb1-detectron2"
VERSION = "0.6"
SDIST_NAME = f"{PACKAGE}-{VERSION}.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
MARKER = "wildlib-patched"  # written into detectron2/_C.py, used to detect our own build

NP_ALIASES = re.compile(r"\bnp\.(bool|int|float|str|object)\b")

EMPTY_C = f'''"""Placeholder for Detectron2's compiled extension ({MARKER}).

The sdist this build comes from has no C++/CUDA sources.  Nothing that Faster R-CNN needs lives
here: NMS and ROIAlign come from torchvision.  Code paths that need the real extension (deformable
convolution, rotated boxes, the fast COCO evaluator) raise AttributeError when used.
"""
'''


class PatchError(RuntimeError):
    pass


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs.extend(v for k, v in attrs if k == "href" and v)


def configured_index_url() -> str:
    """The package index pip is configured with (PIP_INDEX_URL, pip config, else pip's default)."""
    url = os.environ.get("PIP_INDEX_URL", "").strip()
    if not url:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
            capture_output=True, text=True,
        )
        url = out.stdout.strip() if out.returncode == 0 else ""
    if not url:
        from pip._internal.models.index import PyPI  # pip's own default index

        url = PyPI.simple_url
    return url.rstrip("/") + "/"


def fetch_sdist(cache: Path) -> Path:
    """Download the sdist from the configured index's simple page into ``cache``.

    ``pip download`` cannot be used: it prepares the sdist's metadata, and pip refuses a PyPI
    distribution that declares a direct-URL extra (``panopticapi @ https://...``).
    """
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / SDIST_NAME
    if target.exists() and sha256_of(target) == SDIST_SHA256:
        return target
    page_url = urllib.parse.urljoin(configured_index_url(), f"{PACKAGE}/")
    print(f"[detectron2] reading {page_url}")
    with urllib.request.urlopen(page_url, timeout=60) as resp:
        parser = _Links()
        parser.feed(resp.read().decode("utf-8", "replace"))
    links = [urllib.parse.urljoin(page_url, h) for h in parser.hrefs]
    matches = [h for h in links if urllib.parse.urlparse(h).path.endswith("/" + SDIST_NAME)]
    if not matches:
        raise SystemExit(f"[detectron2] {SDIST_NAME} not listed on {page_url}")
    url = matches[0].split("#", 1)[0]
    print(f"[detectron2] downloading {SDIST_NAME}")
    partial = target.with_suffix(".part")
    with urllib.request.urlopen(url, timeout=300) as resp, open(partial, "wb") as out:
        shutil.copyfileobj(resp, out)
    os.replace(partial, target)
    return target


def replace_exactly(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    found = text.count(old)
    if found != count:
        raise PatchError(f"{path}: expected {count} occurrence(s) of {old!r}, found {found}")
    path.write_text(text.replace(old, new))


def patch_tree(src: Path) -> dict[str, int]:
    """Apply the four fixes to an extracted sdist; return how many edits each made."""
    stats: dict[str, int] = {}
    setup_py = src / "setup.py"
    # (2) no C++ extension: drop ext_modules/cmdclass, provide an empty module instead.
    replace_exactly(
        setup_py,
        '    ext_modules=get_extensions(),\n'
        '    cmdclass={"build_ext": torch.utils.cpp_extension.BuildExtension},\n',
        "",
    )
    (src / "detectron2" / "_C.py").write_text(EMPTY_C)
    # (3) package the model-zoo configs that the sdist keeps inside detectron2/model_zoo.
    replace_exactly(
        setup_py,
        'package_data={"detectron2.model_zoo": get_model_zoo_configs()},',
        'package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},',
    )
    n_configs = len(list((src / "detectron2" / "model_zoo" / "configs").rglob("*.yaml")))
    if n_configs == 0:
        raise PatchError("no model-zoo configs found under detectron2/model_zoo/configs")
    stats["model_zoo_configs"] = n_configs
    # (4a) Pillow >= 10: Image.LINEAR -> Image.BILINEAR.
    replace_exactly(
        src / "detectron2" / "data" / "transforms" / "transform.py",
        "interp=Image.LINEAR", "interp=Image.BILINEAR",
    )
    stats["pillow_linear"] = 1
    # (4b) numpy >= 1.24: np.bool/np.int/np.float/np.str/np.object -> builtin types.
    n_alias = 0
    for py in sorted(src.rglob("*.py")):
        text = py.read_text()
        new, n = NP_ALIASES.subn(lambda m: m.group(1), text)
        if n:
            py.write_text(new)
            n_alias += n
    if n_alias == 0:
        raise PatchError("found no numpy aliases to replace: is this really detectron2 v0.6?")
    stats["numpy_aliases"] = n_alias
    return stats


def installed_is_ours() -> bool:
    probe = subprocess.run(
        [sys.executable, "-c",
         "import detectron2, detectron2._C as c; print(detectron2.__version__, c.__doc__ or '')"],
        capture_output=True, text=True,
    )
    return probe.returncode == 0 and MARKER in probe.stdout and probe.stdout.startswith(VERSION)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sdist", type=Path, help="use this local copy of the sdist (no download)")
    ap.add_argument("--cache", type=Path, default=Path(".cache"), help="download cache folder")
    ap.add_argument("--force", action="store_true", help="reinstall even if already installed")
    args = ap.parse_args(argv)

    if not args.force and installed_is_ours():
        print("[detectron2] patched v0.6 already installed")
        return 0
    sdist = args.sdist or fetch_sdist(args.cache)
    digest = sha256_of(sdist)
    if digest != SDIST_SHA256:
        raise SystemExit(
            f"[detectron2] {sdist}: SHA-256 {digest} does not match the pinned {SDIST_SHA256}"
        )
    with tempfile.TemporaryDirectory(prefix="d2build-") as tmp:
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        src = Path(tmp) / f"{PACKAGE}-{VERSION}"
        try:
            stats = patch_tree(src)
        except PatchError as exc:
            raise SystemExit(f"[detectron2] patch failed: {exc}") from None
        print(f"[detectron2] patched: {stats}")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
             "--no-cache-dir", str(src)],
            check=True,
        )
    if not installed_is_ours():
        raise SystemExit("[detectron2] installed, but the import check failed")
    print("[detectron2] installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
