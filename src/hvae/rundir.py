"""The run directory: one owner for what ``hvae train`` writes and ``eval``, ``sample`` and ``report`` read.

Layout (every name below is a property of :class:`RunDir`)::

    RUN_DIR/config.yaml        the resolved run config (model, data, train, eval)
            metrics.jsonl      one JSON object a line: train and val records, by step
            tb/                TensorBoard events
            checkpoints/       see hvae.checkpoint (latest.json and best.json point at step folders)
            model/             the trained model (save_pretrained: config.json, model.safetensors)
            eval.json          hvae eval on the run's own split; eval-<stem>.json: on other data (--data)
            report.html        hvae report
            samples/           hvae sample's default output
            tokenizer.json     text runs: the tokeniser that decodes the model's samples

A file found damaged (hvae.files.DamagedFileError, or any ``ValueError`` that carries the damaged ``path``)
is named with the newest intact checkpoint to use instead: :meth:`RunDir.load_model` never scores a damaged
model silently, and :meth:`RunDir.resume_checkpoint` falls back to the newest intact checkpoint.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .checkpoint import CheckpointError, latest_checkpoint, saved_step
from .configbase import load_yaml
from .files import atomic_write_text

RUN_FILES: tuple[str, ...] = (
    "config.yaml",
    "metrics.jsonl",
    "tb",
    "checkpoints",
    "model",
    "eval.json",
    "report.html",
    "samples",
)
RUN_FILES += ("tokenizer.json",)  # text runs: the tokeniser that decodes the model's samples

TRAIN_HINT = "train one with `hvae train --config CONFIG.yaml --out RUN_DIR` (it writes config.yaml and model/)"


class RunDirError(ValueError):
    """The output directory cannot be used for this run as asked."""


def damaged_path(e: BaseException) -> Path | None:
    """The file a load error found damaged (``DamagedFileError.path``), or None for any other error."""
    path = getattr(e, "path", None)
    return Path(path) if isinstance(e, ValueError) and path is not None else None


@dataclass
class Metrics:
    """The readable records of ``metrics.jsonl`` (in file order) and what was wrong with the rest."""

    records: list[dict[str, Any]] = field(default_factory=list)
    cut_short: int | None = None  # the last line, cut short by a kill while it was written
    damaged: list[tuple[int, str]] = field(default_factory=list)  # (line number, why) of lines before the last

    def damage_message(self, path: Path) -> str | None:
        """The one sentence ``--resume`` (as an error) and ``hvae report`` (as a note) say about damaged lines."""
        if not self.damaged:
            return None
        line, why = self.damaged[0]
        more = f" (and {len(self.damaged) - 1} more line(s))" if len(self.damaged) > 1 else ""
        return f"{path} line {line} is damaged ({why}){more}; repair or delete that line, then resume again"


@dataclass
class Candidate:
    """A saved model in the run: ``model/`` or a checkpoint's, at its training step."""

    directory: Path
    step: int
    label: str  # "model/" or the checkpoint folder's name


class RunDir:
    """A run directory: its paths, and the reads and writes that more than one job needs.

    ``RunDir(path)`` touches nothing on disk; every method says what it reads or writes.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # ------------------------------------------------------------------------------------------------ paths

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def tb_dir(self) -> Path:
        return self.path / "tb"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def report_path(self) -> Path:
        return self.path / "report.html"

    @property
    def samples_dir(self) -> Path:
        return self.path / "samples"

    @property
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer.json"

    def eval_path(self, data: str | Path | None = None) -> Path:
        """``eval.json`` for the run's own split; ``eval-<stem>.json`` for other data (``hvae eval --data``),
        so that scoring other data never replaces the run's own numbers."""
        if data is None:
            return self.path / "eval.json"
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(data).stem or Path(data).name).strip("._") or "data"
        return self.path / f"eval-{stem}.json"

    # ------------------------------------------------------------------------------------------------ config

    def is_run(self) -> bool:
        """Whether ``config.yaml`` is one ``hvae train`` wrote: the four sections, resolved (the model's
        ``data_shape`` filled in), valid as a run config."""
        from .runconfig import RunConfig

        try:
            data = load_yaml(self.config_path.read_text(encoding="utf-8"))
            if not (isinstance(data, dict) and set(data) == {"model", "data", "train", "eval"}):
                return False
            if not (isinstance(data["model"], dict) and data["model"].get("data_shape")):
                return False
            RunConfig.from_dict(data)
        except (OSError, ValueError, TypeError, yaml.YAMLError):
            return False
        return True

    def read_config(self):
        """The run's :class:`~hvae.runconfig.RunConfig`; a missing folder or config.yaml is a
        ``FileNotFoundError`` that says how to make one."""
        from .runconfig import RunConfig

        self.require()
        return RunConfig.from_yaml(self.config_path)

    def require(self) -> None:
        """Refuse, with how to make one, a folder that is missing or holds no ``config.yaml``."""
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path} is not a run directory (it does not exist); {TRAIN_HINT}")
        if not self.config_path.is_file():
            raise FileNotFoundError(f"{self.path} is not a run directory (no config.yaml); {TRAIN_HINT}")

    def write_config(self, config) -> None:
        atomic_write_text(self.config_path, config.to_yaml())

    # ------------------------------------------------------------------------------------------------ create

    def check(self, resume: bool, overwrite: bool) -> None:
        """Refuse to mix runs: an existing run is continued only with ``resume``, replaced only with
        ``overwrite``, and ``overwrite`` applies only to a folder that holds an hvae run. Removes nothing."""
        out = self.path
        if resume and overwrite:
            raise RunDirError("use either --resume or --overwrite, not both")
        if resume:
            if not self.config_path.is_file():
                raise RunDirError(
                    f"{out} holds no run to resume (no config.yaml); start one with hvae train --out {out}"
                )
            return
        if out.exists() and not out.is_dir():
            raise RunDirError(f"{out} is a file; choose a directory for --out")
        if out.is_dir() and any(out.iterdir()):
            if not self.is_run():
                # run files are known by name only: in a folder that is not a run they may be the user's own
                raise RunDirError(
                    f"{out} is not empty and holds no hvae run (no config.yaml written by hvae train)"
                    + (", so --overwrite will not delete anything in it" if overwrite else "")
                    + "; choose a new or empty folder for --out, or empty this one yourself"
                )
            if not overwrite:
                raise RunDirError(
                    f"{out} already holds another run; pass --resume to continue it, --overwrite to replace it, "
                    "or choose another --out"
                )

    def prepare(self, resume: bool, overwrite: bool) -> None:
        """:meth:`check`, then, with ``overwrite``, remove the old run's files (nothing else in the folder),
        and create the folder. Call it only when the new run is about to write."""
        self.check(resume, overwrite)
        if overwrite and self.path.is_dir():
            for p in self.path.iterdir():
                if p.name in RUN_FILES:
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        self.path.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------------------------------------ metrics

    def read_metrics(self) -> Metrics:
        """Every line of ``metrics.jsonl`` that is a JSON object; a last line cut short (a kill while it was
        written) and damaged lines before it are reported, not raised. An absent file has no records."""
        m = Metrics()
        if not self.metrics_path.exists():
            return m
        text = self.metrics_path.read_text(encoding="utf-8", errors="replace")
        lines = [(i, ln) for i, ln in enumerate(text.splitlines(), 1) if ln.strip()]
        for k, (i, ln) in enumerate(lines):
            try:
                record = json.loads(ln)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                if k == len(lines) - 1:
                    m.cut_short = i
                else:
                    m.damaged.append((i, str(e)))
                continue
            m.records.append(record)
        return m

    def trim_metrics(self, resume_step: int, log: Callable[[str], None]) -> None:
        """Keep the records of ``metrics.jsonl`` up to the checkpoint's step (the later steps are about to be
        recomputed). A last line cut short is dropped with a note; a damaged line before the last is an
        error that names it (and nothing is changed)."""
        if not self.metrics_path.exists():
            return
        m = self.read_metrics()
        message = m.damage_message(self.metrics_path)
        if message:
            raise RunDirError(message)
        if m.cut_short is not None:
            where = f"{self.metrics_path} line {m.cut_short}"
            log(f"note: {where} was cut short (the run stopped while writing it); dropped")
        kept = [r for r in m.records if r.get("step", 0) <= resume_step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    # ------------------------------------------------------------------------------------------------ models

    def candidates(self) -> tuple[list[Candidate], list[tuple[Path, str]]]:
        """The saved models of the run, newest first (``model/`` before a checkpoint of the same step), and
        the damaged ones as (file, why). Reads only the files' headers."""
        found: list[Candidate] = []
        damaged: list[tuple[Path, str]] = []
        dirs: list[tuple[Path, str]] = []
        if (self.model_dir / "model.safetensors").is_file():
            dirs.append((self.model_dir, "model/"))
        seen = set()
        for which in ("latest", "best"):
            try:
                ckpt = latest_checkpoint(self.path, which)
            except CheckpointError as e:
                damaged.append((Path(getattr(e, "path", None) or self.checkpoints_dir / f"{which}.json"), str(e)))
                continue
            if ckpt is not None and ckpt.name not in seen:
                seen.add(ckpt.name)
                dirs.append((ckpt / "model", ckpt.name))
        for d, label in dirs:
            try:
                found.append(Candidate(d, saved_step(d), label))
            except ValueError as e:
                path = damaged_path(e)
                if path is None:
                    raise
                damaged.append((path, str(e)))
        # newest first; at equal steps model/ (the EMA weights when train.ema_decay is set) first
        found.sort(key=lambda c: (-c.step, c.label != "model/"))
        return found, damaged

    def load_model(self, device="cpu") -> tuple[Any, str | None]:
        """The model a run's users should read, and a note when it is not ``model/``: the final model, or
        the latest checkpoint's when training did not finish, or when a resumed run stopped early. A
        damaged model or checkpoint is an error that names the damaged file and the newest intact checkpoint
        (``hvae train --resume`` rewrites model/ from it); a run with no saved model at all is a
        ``FileNotFoundError``."""
        from .model import load

        found, damaged = self.candidates()
        for c in found:
            try:
                model = load(c.directory, map_location=device)
            except ValueError as e:
                path = damaged_path(e)
                if path is None:
                    raise
                damaged.append((path, str(e)))
                continue
            if damaged and c.label == "model/":  # a newer checkpoint is damaged: the final model is what there is
                path, why = damaged[0]
                return model, f"{path} is damaged ({why}); using the intact model/ (step {c.step})"
            if damaged:
                raise CheckpointError(self._damage_advice(damaged, c))
            if c.label == "model/":
                return model, None
            if (self.model_dir / "model.safetensors").is_file():
                note = f"{c.label} is newer than model/ (training was resumed and stopped early); using it"
            else:
                note = f"training did not finish; using the latest checkpoint {c.label}"
            return model, note
        if damaged:
            raise CheckpointError(self._damage_advice(damaged, None))
        raise FileNotFoundError(self._no_model_message())

    def _damage_advice(self, damaged: list[tuple[Path, str]], intact: Candidate | None) -> str:
        path, why = damaged[0]
        head = f"{path} is damaged ({why})"
        if intact is None:
            return f"{head}, and the run holds no intact checkpoint; train the model again (hvae train --overwrite)"
        return (
            f"{head}; the newest intact checkpoint is {self.checkpoints_dir / intact.label} (step {intact.step}): "
            f"hvae train --resume {self.path} continues from it and writes model/ again"
        )

    def _no_model_message(self) -> str:
        if self.config_path.is_file():
            return f"{self.path} has no trained model yet: {self.restart_advice()}"
        return f"{self.path} has no trained model; {TRAIN_HINT}"

    def restart_advice(self) -> str:
        """What eval, sample, report and ``--resume`` all say of a run killed before its first checkpoint."""
        return (
            "training stopped before its first checkpoint, so there is nothing to use or resume; start it again "
            f"with hvae train --config {self.config_path} --out {self.path} --overwrite"
        )

    def resume_checkpoint(self, log: Callable[[str], None]) -> Path | None:
        """The checkpoint ``--resume`` continues from: the latest, or the newest intact one when the latest
        is damaged (said in the log; a damaged file is one whose load error names it, as
        ``hvae.files.DamagedFileError`` does). None when the run has no checkpoint."""
        problem: ValueError | None = None
        try:
            latest = latest_checkpoint(self.path)
        except CheckpointError as e:
            latest, problem = None, e
        if latest is not None:
            problem = _damage(latest)
            if problem is None:
                return latest
        if problem is None:
            return None
        try:
            best = latest_checkpoint(self.path, "best")
        except CheckpointError:
            best = None
        if best is None or best == latest or _damage(best) is not None:
            raise problem
        log(f"note: {problem}; resuming from the newest intact checkpoint {best} instead")
        return best

    # ------------------------------------------------------------------------------------------------ eval

    def write_eval(self, result: dict[str, Any], data: str | Path | None = None) -> Path:
        """Write an evaluation (``eval.json``, or ``eval-<stem>.json`` for other data) atomically."""
        path = self.eval_path(data)
        atomic_write_text(path, json.dumps(result, indent=2))
        return path

    def read_eval(self) -> dict | None:
        path = self.eval_path()
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {"value": data}


def _damage(ckpt: Path) -> ValueError | None:
    """The error that names a damaged file of the checkpoint's model, or None when it loads."""
    from .model import load

    try:
        saved_step(ckpt / "model")
        load(ckpt / "model")
    except ValueError as e:
        if damaged_path(e) is None:
            raise
        return e
    return None
