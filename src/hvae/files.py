"""Files and folders written atomically, with the permissions a plain ``open()`` or ``mkdir()`` gives.

``tempfile`` (and safetensors, which writes through a temporary file of its own) creates files 0600 and
folders 0700 whatever the umask, so a run written through them would be unreadable to the other users of a
shared filesystem; every temporary file or folder that becomes part of a run is given the usual mode (0666
or 0777 less the umask) here before it takes its final name.

Saved tensors carry a digest (:func:`tensors_digest`, written in the safetensors metadata as ``DIGEST_KEY``):
a file whose bytes changed after the save (a bad disk, a copy cut short and padded) loads without an error
otherwise, and scores garbage. Loading checks it and raises :class:`DamagedFileError`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

#: the safetensors metadata key of :func:`tensors_digest`
DIGEST_KEY = "sha256"


class DamagedFileError(ValueError):
    """A saved file whose contents changed, or were cut short, after it was written. ``path``: the file."""

    def __init__(self, path: str | os.PathLike, message: str | None = None):
        self.path = Path(path)
        super().__init__(message or f"{self.path} is damaged: its tensors do not match the digest written with them")


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) over the tensors sorted by name: each one's name, dtype, shape and raw bytes in memory
    order. The same for the same tensors wherever they are (a device's are copied to the host); hashed whole,
    with no Python loop over elements."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach()
        h.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{tuple(t.shape)}\0".encode())
        # bytes as the safetensors file holds them (contiguous, little-endian as torch's supported hosts)
        flat = t.cpu().contiguous().reshape(-1)
        # (numpy's stubs do not declare ndarray a buffer: it is one)
        h.update(memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else b"")  # type: ignore[arg-type]
    return h.hexdigest()


def save_tensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> None:
    """``safetensors.torch.save_file`` with the tensors' digest added to ``metadata`` (host tensors)."""
    from safetensors.torch import save_file

    save_file(dict(tensors), str(path), metadata={**(metadata or {}), DIGEST_KEY: tensors_digest(tensors)})


def load_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of a safetensors file (on ``device``) and its metadata, checked against the digest written
    with them; files without a digest (older hvae) pass. Raises :class:`DamagedFileError` for a file that
    cannot be read (truncated, overwritten) or whose tensors do not match their digest; ``OSError`` for one
    that cannot be opened."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device=str(device))
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except SafetensorError as e:
        raise DamagedFileError(path, f"{path} cannot be read ({e}); the file is truncated or damaged") from None
    written = metadata.get(DIGEST_KEY)
    if written is not None and written != tensors_digest(tensors):
        raise DamagedFileError(path)
    return tensors, metadata


def umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux's /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _umask_by_setting()


@functools.cache
def _umask_by_setting() -> int:
    # os.umask can only be read by setting it; another thread creating a file in between would get the
    # mode 0o022 allows, so this is done once, at the first write
    old = os.umask(0o022)
    os.umask(old)
    return old


def set_default_mode(path: str | os.PathLike) -> None:
    """Give a file the mode ``open()`` creates files with (0666 less the umask), a folder the mode of
    ``mkdir()`` (0777 less the umask, keeping the set-group-ID bit a shared parent folder hands down)."""
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        os.chmod(path, (0o777 & ~umask()) | (st.st_mode & stat.S_ISGID))
    else:
        os.chmod(path, 0o666 & ~umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary path beside ``path`` to write; on success it gets the default mode and replaces
    ``path`` (``os.replace``), on an error it is removed and ``path`` is left as it was. The writer may
    replace the temporary file with its own (safetensors does): the mode is set after it has written."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        set_default_mode(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically: a kill leaves the old file or the new one, never half."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def make_temp_dir(parent: str | os.PathLike, prefix: str = ".tmp-") -> Path:
    """A new empty folder in ``parent`` with the mode ``mkdir()`` gives; the caller renames or removes it."""
    tmp = tempfile.mkdtemp(dir=parent, prefix=prefix)
    set_default_mode(tmp)
    return Path(tmp)
