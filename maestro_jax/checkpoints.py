"""orbax save/restore of converted params (and, for training, of the whole train state).

Params written by converters live in a folder: `params/` (orbax PyTree checkpoint) plus
`config.json` (the model config and provenance). Writes are atomic: everything goes to a hidden
temporary sibling folder (`.NAME.tmp-HOST-PID-XXXX`, see `staging_dir`) that is renamed into place
at the end, so a folder that exists is finished; an exception (KeyboardInterrupt included) removes
the temporary folder, and one left by a killed process is removed by the next write of the same
folder. Folders and files are created with the user's umask (not `mkdtemp`'s 0700).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from maestro_jax.files import default_mode, replace_dir

CONFIG_FILE = "config.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(path: str | os.PathLike, tag: str = "tmp") -> list[Path]:
    """Remove `.NAME.TAG-HOST-PID-*` siblings of `path` left by dead processes of this host
    (a conversion killed with SIGKILL, e.g. by the out-of-memory killer). Returns them."""
    path = Path(path).absolute()
    host = socket.gethostname()
    removed = []
    if not path.parent.is_dir():
        return removed
    for p in path.parent.glob(f".{path.name}.{tag}-*"):
        parts = p.name[len(f".{path.name}.{tag}-") :].rsplit("-", 2)
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        if not _pid_alive(int(parts[1])):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def new_staging_dir(path: str | os.PathLike, tag: str = "tmp") -> Path:
    """Create a hidden, uniquely named sibling of `path` to write into (mode 0777 & ~umask)."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(path, tag)
    while True:
        tmp = path.with_name(
            f".{path.name}.{tag}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        )
        try:
            tmp.mkdir()  # the umask applies, unlike tempfile.mkdtemp (always 0700)
            return tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def staging_dir(path: str | os.PathLike, tag: str = "tmp") -> Iterator[Path]:
    """Write a folder atomically: yields a new hidden sibling of `path`; on normal exit it is
    renamed to `path` (replacing an existing one), on any exception it is removed."""
    path = Path(path).absolute()
    tmp = new_staging_dir(path, tag)
    try:
        yield tmp
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _numpy_registry():
    """orbax's default type handlers, except that numpy arrays are written without orbax's
    defensive deep copy (it doubles the memory of a save; `save_params` writes synchronously, so
    nothing can change an array while it is written). orbax keeps these names private: if they
    move, saves fall back to the default registry (correct, only more memory)."""
    try:
        from orbax.checkpoint._src.serialization import type_handler_registry as registry
        from orbax.checkpoint._src.serialization import type_handlers

        pairs = [
            (ty, type_handlers.NumpyHandler(deepcopy_host_arrays=False) if ty is np.ndarray else h)
            for ty, h in registry._DEFAULT_TYPE_HANDLERS
        ]
        return registry.create_type_handler_registry(*pairs)
    except (ImportError, AttributeError, TypeError):  # pragma: no cover - other orbax versions
        return None


def _local_checkpointer(compress: bool = True) -> ocp.Checkpointer:
    """A PyTree checkpointer that involves only this process: `save_params` writes host-local
    numpy trees, and in a multi-process run only one process calls it (orbax's default would
    wait at a barrier for all the others)."""
    kw = {"use_compression": compress}
    registry = _numpy_registry()
    if registry is not None:
        kw["type_handler_registry"] = registry
    if jax.process_count() == 1:
        return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(**kw))
    me = jax.process_index()
    mp = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    return ocp.Checkpointer(
        ocp.PyTreeCheckpointHandler(multiprocessing_options=mp, **kw), multiprocessing_options=mp
    )


def _local_reader() -> ocp.Checkpointer:
    """A PyTree checkpointer for the readers below that involves only this process: orbax's
    default waits for every process of a multi-process run, so one process loading weights
    alone (the only one with generation jobs left, an evaluation on process 0) would wait
    forever."""
    if jax.process_count() == 1:
        return ocp.PyTreeCheckpointer()
    me = jax.process_index()
    mp = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    return ocp.Checkpointer(
        ocp.PyTreeCheckpointHandler(multiprocessing_options=mp), multiprocessing_options=mp
    )


def _fix_modes(root: Path) -> None:
    """Give every folder and file under `root` the modes the umask allows (0777/0666 & ~umask):
    some writers (orbax's own temporary folders) create them private."""
    folder_mode, file_mode = default_mode(folder=True), default_mode()
    for dirpath, _, files in os.walk(root):
        os.chmod(dirpath, folder_mode)
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                os.chmod(p, file_mode)


def save_params(
    path: str | os.PathLike,
    params: Any,
    config: dict | None = None,
    *,
    files: Mapping[str, str | os.PathLike] | None = None,
    compress: bool = True,
) -> Path:
    """Write `params` (+ `config.json`) to folder `path`, atomically (replaces an existing one).

    Args:
      params: a tree of arrays; numpy arrays are written as they are (no copy).
      config: written as `config.json`, last.
      files: {name: source file} copied into the folder beside `params/` (e.g. a tokenizer
        vocabulary the model needs).
      compress: zstd-compress the arrays. Trained float weights shrink by only ~10%, and while
        compressing tensorstore holds an encoded copy of (most of) the tree: the converters of
        big checkpoints pass False (no extra memory, about 3x faster).
    """
    path = Path(path).absolute()
    with staging_dir(path) as tmp:
        params = jax.tree.map(np.asarray, params)
        with _local_checkpointer(compress) as ckptr:
            ckptr.save(tmp / "params", args=ocp.args.PyTreeSave(params))
        for name, src in (files or {}).items():
            shutil.copyfile(src, tmp / name)
        _fix_modes(tmp)
        with open(tmp / CONFIG_FILE, "w") as f:
            json.dump(config or {}, f, indent=1, sort_keys=True, default=str)
    return path


def _is_array_meta(x: Any) -> bool:
    return isinstance(x, ocp.metadata.ArrayMetadata)


def _metadata_tree(ckptr: ocp.Checkpointer, params_dir: Path) -> Any:
    """The saved tree of ArrayMetadata (shapes and dtypes; no array is read)."""
    meta = ckptr.metadata(params_dir)
    tree = getattr(meta, "item_metadata", meta)
    return getattr(tree, "tree", tree)


def _restore_args(tree: Any, dtype: Any) -> Any:
    """RestoreArgs that read every floating leaf as `dtype` (tensorstore casts while reading, so
    no float32 copy of the tree is made; None keeps the stored dtypes) and every other leaf as
    stored."""
    dtype = None if dtype is None else np.dtype(dtype)

    def args(m):
        floating = jax.numpy.issubdtype(m.dtype, jax.numpy.floating)
        return ocp.RestoreArgs(restore_type=np.ndarray, dtype=dtype if floating else None)

    return jax.tree.map(args, tree, is_leaf=_is_array_meta)


def read_config(path: str | os.PathLike) -> dict:
    """A params folder's `config.json` ({} when it has none); no array is read."""
    path = Path(path)
    if not (path / CONFIG_FILE).exists():
        return {}
    with open(path / CONFIG_FILE) as f:
        return json.load(f)


def _params_dir(path: str | os.PathLike) -> Path:
    path = Path(path).absolute()
    if not (path / "params").exists():
        raise FileNotFoundError(
            f"{path} holds no converted params (expected {path}/params from a convert.* command)"
        )
    return path / "params"


def load_params(path: str | os.PathLike, dtype: Any = None) -> tuple[Any, dict]:
    """Read a folder written by `save_params`: (params as numpy arrays, config dict).

    Args:
      dtype: None keeps the stored dtypes; otherwise floating leaves are read as this dtype
        (e.g. "bfloat16"), cast while reading.
    """
    params_dir = _params_dir(path)
    with _local_reader() as ckptr:
        if dtype is None:
            params = ckptr.restore(params_dir)
        else:
            ra = _restore_args(_metadata_tree(ckptr, params_dir), dtype)
            params = ckptr.restore(params_dir, args=ocp.args.PyTreeRestore(restore_args=ra))
    return params, read_config(params_dir.parent)


def params_keys(path: str | os.PathLike) -> list[str]:
    """The top-level entries of a params folder, from its metadata (no array is read)."""
    with _local_reader() as ckptr:
        return list(_metadata_tree(ckptr, _params_dir(path)))


def load_params_on_device(
    path: str | os.PathLike,
    dtype: Any = None,
    *,
    keys: tuple[str, ...] | None = None,
    group_bytes: int = 1 << 29,
) -> tuple[dict, dict]:
    """Read a `save_params` folder into device arrays (default device, uncommitted): (params,
    config dict), keeping one copy of the weights.

    Only the top-level entries `keys` are read (all by default; e.g. `("audio",)` of an
    ImageBind folder that holds every modality). Entries are read in groups of about
    `group_bytes` as stored, each group's floating leaves cast to `dtype` while reading and put on
    the device before the next group is read, so the host never holds more than the weights plus
    one group in transit; freed heap pages are handed back to the system at the end.
    """
    params_dir = _params_dir(path)
    out: dict = {}
    with _local_reader() as ckptr:
        tree = _metadata_tree(ckptr, params_dir)
        missing = [k for k in keys or () if k not in tree]
        if missing:
            raise ValueError(f"{path} holds no {missing} (it has {sorted(tree)})")
        groups: list[list[str]] = [[]]
        size = 0
        for k in keys or list(tree):
            n = sum(m.dtype.itemsize * int(np.prod(m.shape))
                    for m in jax.tree.leaves(tree[k], is_leaf=_is_array_meta))  # fmt: skip
            if groups[-1] and size + n > group_bytes:
                groups.append([])
                size = 0
            groups[-1].append(k)
            size += n
        for group in groups:
            item = {k: tree[k] for k in group}
            args = ocp.args.PyTreeRestore(
                item=item, restore_args=_restore_args(item, dtype), partial_restore=True
            )
            out.update(jax.device_put(ckptr.restore(params_dir, args=args)))
    release_host_memory()
    return out, read_config(params_dir.parent)


def release_host_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc keeps them, and a
    resident-memory peak counts them); a no-op where there is no glibc."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
