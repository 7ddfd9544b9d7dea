"""Who may write into a run folder (the run that created it, or an accepted resume of it, while it holds the
folder's lock) and how a run stops safely (README, "Preemption-safe training").

:func:`claim_run_dir` decides the folder and takes it, in an order that writes nothing until every check
has passed:

1. the folder: ``--resume``'s run folder (the folder you resume is the folder written: a copied run writes
   into the copy), else ``--output``, else a new ``runs/<model>-<time>`` (numbered if taken); it must be
   a folder that can be written;
2. another training holding its lock is named (pid, host, start, command) and refused;
3. a resume reads the newest complete checkpoint, checks it is this model (``check_same_model``) and that
   only options of :data:`RESUME_MAY_CHANGE` differ from the run's; a fresh run refuses a folder that
   already holds a run unless ``--overwrite``;
4. only then the lock is taken (``fcntl.flock`` on ``train.lock``, released by the kernel if the process
   dies), what a killed writer left is cleaned (``checkpoint.clean_run_dir``), and with ``--overwrite``
   the old run's files are removed.

:func:`install_stop_handlers` makes SIGTERM (what SLURM, Kubernetes and spot machines send before they kill a
job) act like Ctrl-C: the loop finishes its step, saves, and prints the resume command.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError
from ..interop.io import atomic_write_text
from ..validation import check_output_dir
from . import checkpoint as ckpt_io
from .config import TrainConfig, from_dict
from .distributed import DistInfo, broadcast_object

# options a resume may change; every other option must be the run's own (they shape the model, the data,
# the optimizer or the schedule of the steps already taken)
RESUME_MAY_CHANGE = ("epochs", "max_steps", "workers", "threads", "log_interval", "no_progress",
                     "checkpoint_interval", "eval_interval", "fuse", "plots", "device", "data_dir", "download",
                     "skip_bad_images", "compile", "initial_checkpoint", "output", "resume", "overwrite")
LOCK = "train.lock"
# what a run writes into its folder (removed by --overwrite; anything else in the folder is left alone)
RUN_FILES = ("config.yaml", "config.json", "metrics.csv", "log.jsonl", "curves.png", "progressive.png",
             "bad_images.txt", "model_deploy.safetensors", "model_deploy.json",
             *(ckpt_io.VIEWS[k].format(tag=t) for t in ckpt_io.TAGS for k in ckpt_io.VIEWS))


def resume_folder(resume: str | os.PathLike) -> Path:
    """The run folder of a ``--resume`` argument: the folder itself, or the run a checkpoint file is in."""
    p = Path(resume)
    if p.is_dir() and (p / "manifest.json").is_file():  # run/checkpoints/step-N
        return p.parent.parent
    if p.is_dir():
        return p
    if p.parent.parent.name == ckpt_io.CHECKPOINTS:  # run/checkpoints/step-N/state.pt
        return p.parent.parent.parent
    return p.parent  # run/last.state.pt


def is_run(folder: Path) -> bool:
    return folder.is_dir() and any((folder / n).exists() for n in ("config.yaml", ckpt_io.CHECKPOINTS, "last.state.pt"))


def check_resume_config(stored: dict[str, Any] | None, cfg: TrainConfig, where: Path) -> None:
    """Refuse a resume whose options differ from the run's in anything but :data:`RESUME_MAY_CHANGE`."""
    if not stored:
        return
    known = {k: v for k, v in stored.items() if k in cfg.to_dict()}
    try:
        theirs = from_dict(known).to_dict()
    except ConfigError:  # a run of an older version whose options no longer validate: compare as stored
        theirs = known
    ours = cfg.to_dict()
    changed = [k for k in theirs if k not in RESUME_MAY_CHANGE and theirs[k] != ours.get(k)]
    if changed:
        diff = "; ".join(f"--{k.replace('_', '-')} {ours.get(k)!r} (the run has {theirs[k]!r})" for k in changed)
        may = ", ".join(f"--{k.replace('_', '-')}" for k in RESUME_MAY_CHANGE if k not in ("output", "resume"))
        raise ConfigError(
            f"cannot resume {where} with other options: {diff}. A resume may change only {may}; to train with "
            "other options, start a new run (another --output, with --initial-checkpoint for its weights). "
            "Nothing in the run folder was changed"
        )


class RunLock:
    """An exclusive ``flock`` on ``RUN/train.lock``; the file says who holds it."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK
        self.fd: int | None = None

    def holder(self) -> str | None:
        """Who holds the lock now (None: nobody). Creates nothing."""
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _describe(self.path)
        finally:
            os.close(fd)  # closing drops our own (shared) lock
        return None

    def acquire(self) -> None:
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise ConfigError(_in_use(self.path.parent, _describe(self.path))) from None
            try:  # the holder before us may have deleted the file between our open and our lock: retry
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now().isoformat(timespec="seconds"),
                "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still holding it (see acquire's inode check)
        os.close(self.fd)
        self.fd = None


def _describe(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    return f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')} ({info.get('command')})"


def _in_use(run_dir: Path, holder: str) -> str:
    return (f"{run_dir} is in use by another training: {holder}. Two runs writing one folder would mix their "
            "checkpoints; wait for it to finish, stop it, or train into another --output")


def _default_dir(model: str) -> Path:
    base = Path("runs") / f"{model}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():  # two runs started in the same second get their own folders, as timm numbers them
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def claim_run_dir(cfg: TrainConfig, dist: DistInfo, model_state: dict[str, Any]
                  ) -> tuple[Path, RunLock | None, ckpt_io.Checkpoint | None]:
    """The run folder, its lock (rank 0) and, when resuming, the checkpoint to resume: every check first,
    then the lock, the clean-up and (``--overwrite``) the removal of the old run. Raises before writing
    anything when a check fails."""
    error, lock, ck = None, None, None
    try:
        run_dir = _choose(cfg)
        check_output_dir(run_dir)
        holder = RunLock(run_dir).holder()
        if holder:
            raise ConfigError(_in_use(run_dir, holder))
        if cfg.resume:
            ck = ckpt_io.load_checkpoint(cfg.resume if not Path(cfg.resume).is_dir() else run_dir)
            for note in ck.notes:
                print(f"note: skipped a damaged checkpoint: {note}", file=sys.stderr, flush=True)
            ckpt_io.check_same_model(ck, cfg.model, model_state)
            check_resume_config(ck.state.get("config"), cfg, run_dir)
        elif is_run(run_dir) and not cfg.overwrite:
            raise ConfigError(
                f"{run_dir} already holds a run; continue it with --resume {run_dir}, train into another "
                "--output, or pass --overwrite to replace it")
    except (ConfigError, CheckpointError) as exc:
        error = exc
    if dist.distributed:  # every process stops on the same error
        message = broadcast_object(str(error) if error else None, dist)
        if error is None and message is not None:
            raise ConfigError(message)
    if error is not None:
        raise error
    run_dir = Path(broadcast_object(str(run_dir), dist))
    if dist.is_primary:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(run_dir)
        lock.acquire()
        try:
            ckpt_io.clean_run_dir(run_dir)
            if cfg.overwrite and not cfg.resume:
                _remove_run(run_dir)
        except BaseException:
            lock.release()
            raise
    return run_dir, lock, ck


def _choose(cfg: TrainConfig) -> Path:
    if cfg.resume:
        folder = resume_folder(cfg.resume)
        if cfg.output and Path(cfg.output).resolve() != folder.resolve():
            raise ConfigError(
                f"--resume {cfg.resume} continues the run in {folder}, but --output is {cfg.output}; a resume "
                f"writes into the run it resumes. To start a new run from its weights use --initial-checkpoint "
                f"{folder / 'last.safetensors'} --output {cfg.output}")
        if not folder.is_dir():
            raise CheckpointError(f"cannot resume {cfg.resume}: {folder} does not exist")
        return folder
    return Path(cfg.output) if cfg.output else _default_dir(cfg.model)


def _remove_run(run_dir: Path) -> None:
    shutil.rmtree(run_dir / ckpt_io.CHECKPOINTS, ignore_errors=True)
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)


# -- stopping safely ---------------------------------------------------------------------------------------
def install_stop_handlers(trainer: Any) -> dict[int, Any]:
    """Ctrl-C and SIGTERM (what SLURM, Kubernetes and spot machines send before they kill a job): finish the
    step, save, print the resume command; a second one stops at once. Returns the previous handlers."""
    def handler(signum, frame):
        if trainer._stop_requested:
            raise KeyboardInterrupt
        trainer._stop_requested, trainer._stop_signal = True, signum
        if trainer.primary:
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            print(f"\n{name}: finishing this step, saving a checkpoint (again to abort at once)",
                  file=sys.stderr, flush=True)

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}


def loader_worker_init() -> Callable[[int], None]:
    """The DataLoader ``worker_init_fn`` of training loaders: a SIGTERM sent to the whole process group (as
    SLURM does) must not kill the workers mid-step, since the main process finishes the step, saves, and shuts
    them down itself. Workers exit on SIGTERM only once this process is exiting (multiprocessing terminates
    its daemonic children then, and would otherwise wait for them forever)."""
    global _EXITING
    if _EXITING is None:
        import atexit
        import multiprocessing

        _EXITING = multiprocessing.Event()
        # registered after multiprocessing's exit handler, so it runs before it (atexit: last in, first out)
        atexit.register(_EXITING.set)
    return functools.partial(_worker_sigterm, _EXITING)


_EXITING = None


def _worker_sigterm(exiting: Any, worker_id: int) -> None:
    def handler(signum, frame):
        if exiting.is_set():
            os._exit(0)

    signal.signal(signal.SIGTERM, handler)


def report_bad_images(run_dir: Path, *datasets: Any) -> None:
    """Say how many unreadable images ``--skip-bad-images`` skipped so far and list them in the run folder."""
    from ..data.datasets import bad_images

    bad = sorted({p for ds in datasets for p in bad_images(ds)})
    if bad:
        print(f"skipped {len(bad)} unreadable image(s) so far (--skip-bad-images), listed in "
              f"{run_dir / 'bad_images.txt'}", flush=True)
        atomic_write_text(run_dir / "bad_images.txt", "\n".join(bad) + "\n")
