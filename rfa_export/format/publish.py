"""Publishing an export directory in one atomic step, and cleaning up after killed exports.

An export is written into a staging folder beside OUT_DIR (`.rfa-export-<name>-*`, locked with flock while
its writer lives), then swapped with OUT_DIR by one renameat2(RENAME_EXCHANGE): a reader sees the old
export or the new one, never a mix. Entries of OUT_DIR that are not export files (an engine cache, a user's
notes) are carried into the new folder. Where the swap cannot be made (no renameat2, OUT_DIR a mount point
or the current directory, an unwritable parent) the files are renamed one by one with the model last; a
reader that meets a mixed pair refuses it, since the JSON must equal the model's embedded metadata.
Staging folders whose writer has died (no lock held) are removed by the next export.
"""

import ctypes
import errno
import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence, Union

from .metadata import DATA_FILE, METADATA_FILE, MODEL_FILE

STAGING_PREFIX = ".rfa-export-"
GENAI_CONFIG_FILE = "genai_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# publishing order (one by one, where the folder cannot be swapped): the model last
SEQ2SEQ_FILES = ("encoder_model.onnx.data", "decoder_model.onnx.data", "encoder_model.onnx", "decoder_model.onnx")
EXPORT_FILES = (DATA_FILE, *TOKENIZER_FILES, GENAI_CONFIG_FILE, *SEQ2SEQ_FILES, METADATA_FILE, MODEL_FILE)
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def clean_stale_staging(folder: Path) -> None:
    """Remove staging folders in `folder` whose writer no longer holds their lock."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(STAGING_PREFIX) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live export
        else:
            shutil.rmtree(entry.path, ignore_errors=True)
        finally:
            os.close(fd)


def _locked_staging(folder: Path, name: str):
    """(path, fd holding its lock) of a new staging folder; retried if a cleaner removed it before the lock."""
    for _ in range(10):
        path = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{name}-", dir=folder))
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_nlink > 0:
                return path, fd
        except OSError:
            pass
        os.close(fd)
    raise OSError(f"cannot create a staging folder in {folder}")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the system or file system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EXDEV, errno.EBUSY, errno.EPERM, errno.ENOTSUP):
        return False
    raise OSError(err, f"cannot publish {b}: {os.strerror(err)}")


def _can_swap(out: Path) -> bool:
    if not out.exists():
        return True
    cwd = Path.cwd().resolve()
    return out.stat().st_dev == out.parent.stat().st_dev and out != cwd and out not in cwd.parents


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _publish_files(staging: Path, out: Path, owned: Sequence[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    new = set(os.listdir(staging))
    for name in owned:
        if name in new:
            if (out / name).is_dir():
                _remove(out / name)
            os.replace(staging / name, out / name)
    for name in owned:  # files of the previous export that this one does not have
        if name not in new:
            _remove(out / name)


def _publish_swap(staging: Path, out: Path, owned: Sequence[str]) -> bool:
    mode = out.stat().st_mode if out.exists() else 0o777 & ~_umask()
    os.chmod(staging, mode & 0o7777)
    if not out.exists():
        try:
            os.rename(staging, out)
            return True
        except OSError:
            pass
    if out.is_dir() and not os.listdir(out):
        os.rename(staging, out)  # over an empty directory: atomic
        return True
    carried = [n for n in os.listdir(out) if n not in owned and not n.startswith(STAGING_PREFIX)]
    for name in carried:
        os.rename(out / name, staging / name)
    try:
        if _exchange(staging, out):
            return True
    except BaseException:
        _move_back(carried, staging, out)
        raise
    _move_back(carried, staging, out)
    return False


def _move_back(names, staging: Path, out: Path) -> None:
    for name in names:
        os.rename(staging / name, out / name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def staged_export(out_dir: Union[str, Path], owned: Sequence[str] = EXPORT_FILES) -> Iterator[Path]:
    """Yield an empty folder to write an export into; on leaving the block without an error it becomes
    OUT_DIR in one atomic step, on an error it is removed and OUT_DIR is untouched. `owned`: the entries an
    export writes (in publishing order); OUT_DIR's other entries are carried over."""
    out = Path(os.path.realpath(out_dir))
    if out.exists() and not out.is_dir():
        raise OSError(f"output directory {out_dir} exists and is not a directory")
    clean_stale_staging(out.parent)
    if out.is_dir():
        clean_stale_staging(out)  # staging folders of earlier versions lived inside OUT_DIR
    swap = _can_swap(out)
    try:
        staging, fd = _locked_staging(out.parent, out.name) if swap else (None, None)
    except OSError:
        staging, fd = None, None
    if staging is None:  # the parent is not writable, or the folder cannot be swapped: stage inside it
        swap = False
        out.mkdir(parents=True, exist_ok=True)
        staging, fd = _locked_staging(out, out.name)
    try:
        yield staging
        if not (swap and _publish_swap(staging, out, owned)):
            _publish_files(staging, out, owned)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # after a swap: the previous export
        os.close(fd)
