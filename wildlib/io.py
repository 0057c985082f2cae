"""Small file helpers: atomic writes, stage folders, environment capture."""

from __future__ import annotations

import gzip
import json
import math
import os
import platform
import secrets
import shutil
import zlib
from pathlib import Path
from typing import Any, Callable

try:
    from tqdm.auto import tqdm  # progress bars where tqdm is installed (wildlib[detect] runs without it)
except ImportError:  # pragma: no cover - the ONNX-Runtime-only environment
    tqdm = None

MAX_GUNZIP_BYTES = 512 * 2**20  # a gzipped JSON file may unpack to this much (a bomb is refused before it fills memory)


def progress(items, desc: str, total: int | None = None, unit: str = "it", enabled: bool = True):
    """``items`` behind a progress bar (tqdm's: a widget in JupyterLab, a line under papermill and
    in a terminal), redrawn at most every 2 s so that it costs nothing beside a timed loop; the items
    themselves where tqdm is missing or ``enabled`` is false.  Every loop longer than about 10 s in
    the notebooks and the library runs behind one.  Introduced in notebook 03_weight_sharing."""
    if tqdm is None or not enabled:
        return items
    return tqdm(items, desc=desc, total=total, unit=unit, mininterval=2.0)


def atomic_write(path: str | os.PathLike, writer: Callable[[str], None]) -> Path:
    """Call ``writer(tmp_path)``, flush it to disk, then rename onto ``path``: readers never see
    a half file, a failure leaves any previous file untouched, and after a crash either the old
    or the new file is there.  The temporary file is created with the usual permissions (0666
    less the process's umask, applied by the kernel: no umask is changed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        writer(str(tmp))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def copy_file(src, dest) -> Path:
    """Copy ``src`` to ``dest`` atomically (a reader never sees half a file)."""
    return atomic_write(dest, lambda tmp: shutil.copyfile(src, tmp))


def write_csv(path, table, **kwargs) -> Path:
    """A pandas table as CSV, written atomically.

    Introduced in notebook 01_train_baseline, section "Where the time goes"."""
    return atomic_write(path, lambda tmp: table.to_csv(tmp, **kwargs))


def write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically.  Introduced in notebook 01_train_baseline."""
    def _w(tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    return atomic_write(path, _w)


def _jsonable(obj: Any):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path, data: dict) -> Path:
    """Write ``data`` as indented JSON atomically (numpy numbers and NaN made JSON-safe); a path
    ending in ``.gz``: compact JSON, gzipped (reproducibly: no time stamp).
    Introduced in notebook 01_train_baseline, section "Does the saved file give back the same model?"."""
    if Path(path).suffix == ".gz":
        payload = gzip.compress(json.dumps(_jsonable(data), separators=(",", ":")).encode(), mtime=0)
        return atomic_write(path, lambda tmp: Path(tmp).write_bytes(payload))
    return write_text(path, json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")


def read_json(path) -> dict:
    """The JSON in ``path`` (UTF-8); a path ending in ``.gz``: one gzip member, refused if it unpacks
    to more than ``MAX_GUNZIP_BYTES``.  Errors name the file.
    Introduced in notebook 05_evaluate, section "The deployable on photos"."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found (did the previous stage run?)")
    if path.suffix == ".gz":
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip framing; one member, as write_json writes
        try:
            text = inflate.decompress(path.read_bytes(), MAX_GUNZIP_BYTES + 1)
        except zlib.error as exc:
            raise ValueError(f"{path}: not a gzipped JSON file ({exc})") from None
        if len(text) > MAX_GUNZIP_BYTES:
            raise ValueError(f"{path}: unpacks to more than {MAX_GUNZIP_BYTES} bytes; refused")
        if not inflate.eof:
            raise ValueError(f"{path}: not a gzipped JSON file (cut short)")
        if inflate.unused_data:
            raise ValueError(f"{path}: not a gzipped JSON file (bytes after its one gzip member)")
    else:
        text = path.read_bytes()
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def save_figure(fig, path) -> Path:
    """Save a matplotlib figure atomically, in the format of ``path``'s suffix.  Introduced in
    notebook 00_explore_data, section "Class counts (against the paper's, for the paper's classes)"."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format=Path(path).suffix[1:]))


def slug(name: str) -> str:
    """A file-name-safe form of a display name: letters, digits, '-' and '_' only.

    Introduced in notebook 05_evaluate, section "The variants and their files"."""
    out = "".join(c if c.isalnum() or c in "-_" else "-" for c in name.lower())
    return "-".join(p for p in out.split("-") if p) or "unnamed"


def project_root() -> Path:
    """The checkout holding ``notebooks/`` (editable install), else the current folder."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "notebooks").is_dir() else Path.cwd()


def resolve(path) -> Path:
    """An absolute path; a relative one is taken from the project root (not from the notebook's
    folder), so ``runs/default`` means the same folder in JupyterLab and under ``make run``."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (project_root() / p).resolve()


def stage_dir(run_dir, name: str) -> Path:
    """``RUN_DIR/<name>/``, made if missing.  Introduced in notebook 00_explore_data."""
    d = resolve(run_dir) / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``; else what ``platform`` knows): every timing
    is named with it, since the same code runs at different speeds on different CPUs."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


SPEED_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")


def environment() -> dict:
    """What a reader needs to reproduce a number: versions, threads, device.

    Introduced in notebook 01_train_baseline."""
    import torch

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the kernels PyTorch picked: AVX2, AVX512...
        # the process settings that change speed: thread pools, and glibc's trimming (Dask sets it)
        "env": {k: os.environ[k] for k in SPEED_ENV if k in os.environ},
    }
    try:
        import detectron2
        import torchvision

        info.update(detectron2=detectron2.__version__, torchvision=torchvision.__version__)
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
