"""MLflow tracking for teams (extra ``edgetl[track]``): one MLflow run per edgetl run.

Turned on by ``--track URI`` or the standard ``MLFLOW_TRACKING_URI``. `train` logs the whole
config as params, per-epoch curves of each phase, the final test metrics, the plots and
model.keras; `eval` adds its metrics to the same MLflow run; `convert` logs a nested run with
every verified .tflite, labels and the manifest; `bench` logs its report. The MLflow run id is
kept in RUN/tracking.json so the later commands find their parent.

Tracking is a copy, never the record: the run directory is always complete on its own. The first
failure (server down, store locked, extra missing) prints one warning line and turns tracking off
for the rest of that command; nothing else changes.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from edge_runtime import edgetl_version
from edge_runtime.errors import UserError

from . import rundir as R

ENV_URI = "MLFLOW_TRACKING_URI"
ENV_EXPERIMENT = "MLFLOW_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "edgetl"
_PARAM_MAX = 6000     # MLflow's limit on one param value


def _safe_key(k: str) -> str:
    """MLflow keys allow letters, digits and _ - . space / only."""
    return "".join(ch if ch.isalnum() or ch in "_-. /" else "_" for ch in str(k))


class Tracker:
    """Best-effort MLflow logging for one command. Every method is a no-op when tracking is off
    (no URI) or has failed once."""

    def __init__(self, uri: str | None = None, explicit: bool = False):
        self.uri = uri or os.environ.get(ENV_URI) or None
        self.client = None
        self.run_id: str | None = None
        self.failed = False
        self.attached = False   # logging into an earlier command's run: end() leaves it as it was
        if not self.uri:
            return
        try:
            import mlflow  # noqa: F401
        except ImportError:
            msg = ('MLflow tracking asked for, but mlflow is not installed: pip install "edgetl[track]"')
            if explicit:
                raise UserError(msg) from None
            self._warn(msg)
            return
        if self.uri.startswith(("http://", "https://")):
            # fail within seconds when the server is down (MLflow's own default retries for minutes);
            # a user's own settings win
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

    @property
    def on(self) -> bool:
        return bool(self.uri) and not self.failed

    def _warn(self, msg: str):
        self.failed = True
        print(f"warning: {msg}", file=sys.stderr, flush=True)

    def _call(self, what: str, fn, *a, **kw):
        if not self.on:
            return None
        try:
            return fn(*a, **kw)
        except Exception as e:  # noqa: BLE001 - any tracking failure must leave the run alone
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            self._warn(f"MLflow tracking failed ({what} at {self.uri}: {first}); tracking is off for the "
                       "rest of this command, local results are written as usual")
            return None

    # ------------------------------------------------------------------ runs
    def _experiment_id(self) -> str:
        name = os.environ.get(ENV_EXPERIMENT) or DEFAULT_EXPERIMENT
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):
            # artifacts beside the database, not wherever the command happened to be started
            db = Path(self.uri[len("sqlite:///"):])
            location = (db.resolve().parent / "mlartifacts").as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def start(self, run_dir: Path, kind: str, tags: dict | None = None, parent_of: Path | None = None,
              resume: bool = False) -> str | None:
        """Create the MLflow run for ``kind`` (train | eval | convert | bench). ``parent_of``: a
        run directory whose MLflow run becomes the parent (convert nests under its training run).
        ``resume``: continue the MLflow run recorded in the run directory."""
        def go():
            from mlflow.tracking import MlflowClient
            self.client = MlflowClient(tracking_uri=self.uri)
            rec = _record(Path(run_dir))
            if resume and rec and rec.get("uri") == self.uri:
                self.run_id = rec["run_id"]
                self.client.update_run(self.run_id, status="RUNNING")
                return self.run_id
            all_tags = {"edgetl.kind": kind, "edgetl.run": str(Path(run_dir).resolve()),
                        "edgetl.version": edgetl_version(), **{k: str(v) for k, v in (tags or {}).items()}}
            parent = _record(Path(parent_of)) if parent_of is not None else None
            if parent and parent.get("uri") == self.uri:
                all_tags["mlflow.parentRunId"] = parent["run_id"]
            run = self.client.create_run(self._experiment_id(), tags=all_tags,
                                         run_name=f"{Path(run_dir).name}" + ("" if kind == "train" else f" {kind}"))
            self.run_id = run.info.run_id
            if kind == "train":
                R.write_json(Path(run_dir) / R.TRACKING, {"uri": self.uri, "run_id": self.run_id,
                                                          "experiment_id": run.info.experiment_id})
            return self.run_id
        return self._call("starting a run", go)

    def attach(self, run_dir: Path) -> str | None:
        """Log into the MLflow run of an earlier `train` (eval adds its metrics there); a new run
        when there is none for this URI."""
        rec = _record(Path(run_dir))
        if rec and rec.get("uri") == self.uri:
            def go():
                from mlflow.tracking import MlflowClient
                self.client = MlflowClient(tracking_uri=self.uri)
                self.run_id = rec["run_id"]
                self.attached = True
                return self.run_id
            return self._call("attaching to the run", go)
        return self.start(run_dir, "eval")

    def end(self, ok: bool = True):
        if self.run_id and not self.attached:
            self._call("finishing the run", self.client.set_terminated, self.run_id,
                       "FINISHED" if ok else "FAILED")

    # ------------------------------------------------------------------ data
    def params(self, flat: dict):
        if not (self.on and self.run_id):
            return
        from mlflow.entities import Param
        items = [Param(_safe_key(k), str(v)[:_PARAM_MAX]) for k, v in sorted(flat.items())]
        for i in range(0, len(items), 100):   # MLflow takes at most 100 params per batch
            self._call("logging params", self.client.log_batch, self.run_id, params=items[i:i + 100])

    def metrics(self, values: dict, step: int = 0):
        self._log_metrics((k, v, step) for k, v in values.items())

    def series(self, prefix: str, history: dict):
        """Per-epoch curves: every list-valued entry of a phase's history, step = epoch (1-based)."""
        self._log_metrics((f"{prefix}/{k}", v, e + 1) for k, vals in history.items() if isinstance(vals, list)
                          for e, v in enumerate(vals))

    def _log_metrics(self, triples):
        """(key, value, step) -> MLflow metrics in batches of at most 1000 (its limit); non-numbers
        and NaN are left out."""
        if not (self.on and self.run_id):
            return   # before the import: with tracking off, MLflow is never loaded (~0.4 s)
        import time

        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        items = [Metric(_safe_key(k), float(v), now, step) for k, v, step in triples
                 if isinstance(v, (int, float)) and v == v]
        for i in range(0, len(items), 1000):
            self._call("logging metrics", self.client.log_batch, self.run_id, metrics=items[i:i + 1000])

    def artifact(self, path: Path, artifact_path: str | None = None):
        path = Path(path)
        if not (self.on and self.run_id and path.exists()):
            return
        fn = self.client.log_artifacts if path.is_dir() else self.client.log_artifact
        self._call(f"uploading {path.name}", fn, self.run_id, str(path), artifact_path)


def _record(run_dir: Path) -> dict | None:
    p = run_dir / R.TRACKING
    try:
        return R.read_json(p) if p.exists() else None
    except UserError:
        return None


def test_metrics(report: dict, prefix: str = "test") -> dict:
    """Flat metric dict of a classification report (overall and per class)."""
    out = {f"{prefix}/{k}": report[k] for k in ("accuracy", "class_avg_accuracy", "macro_f1", "macro_auc", "n")
           if report.get(k) is not None}
    for c, v in (report.get("per_class") or {}).items():
        for k in ("accuracy", "precision", "recall", "f1"):
            out[f"{prefix}/class/{c}/{k}"] = v[k]
    return out
