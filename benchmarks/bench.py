"""`edgetl bench`: accuracy against latency for each backbone x precision, in one process.

For each backbone row of a preset: train (cached-feature head; or reuse a given run), convert
every precision through the converter (which verifies each artifact on the held-out test split),
then time every artifact with the edge runtime on this machine. All rows share one data set,
one split and one process, so latencies compare; the report also gives ratios to a reference row.
Presets are JSON files in ``benchmarks/presets/``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from converter.gate import ALPHA
from converter.precision import INT8
from edge_runtime.atomic import write_json
from edge_runtime.errors import UserError
from edge_runtime.log import log as _log
from trainer.runs import rundir as R
from trainer.runs.run import read_config

PRESETS = Path(__file__).resolve().parent / "presets"


@dataclass
class Row:
    backbone: str
    alpha: float | None = None
    size: int | None = None
    weights: str = "imagenet"
    run: str | None = None            # reuse this trained run instead of training
    latency_only: bool = False        # no pretrained weights offline: time it, do not rank its accuracy
    subset_per_class: int | None = None  # train this row on fewer images (latency-only rows)

    @property
    def name(self) -> str:
        a = f"-a{self.alpha:g}" if self.alpha is not None else ""
        s = f"-{self.size}" if self.size else ""
        return f"{self.backbone}{a}{s}"


@dataclass
class BenchConfig:
    data: str
    rows: list[Row]
    precisions: list[str] = field(default_factory=lambda: ["fp32", "fp16", "dynamic", "int8"])
    name: str = "custom"
    subset_per_class: int | None = None   # stratified subset of DATA (CI)
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    max_int8_drop: float = 1.0            # points; more is a verification failure
    min_agreement: float = 0.0            # int8 vs Keras top-1 agreement below this fails
    calibration_samples: int = 300
    runs: int = 50
    warmup: int = 5
    threads: list[int] | None = None      # default: 1 and all cores
    reference: str | None = None          # row name + " " + precision; default the first fp32 row
    head_epochs: int = 60

    @classmethod
    def from_dict(cls, d: dict) -> "BenchConfig":
        d = dict(d)
        d["rows"] = [Row(**r) for r in d.get("rows", [])]
        if "fractions" in d:
            d["fractions"] = tuple(d["fractions"])
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise UserError(f"bench config: unknown keys {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fractions"] = list(self.fractions)
        return d


def parse_rows(text: str, default_weights: str = "imagenet") -> list[Row]:
    """``--backbones``: a comma list of NAME[:ALPHA][@SIZE][=WEIGHTS]; a row without ``=WEIGHTS``
    takes ``default_weights`` (so one bench can mix a weights file for one row with the installed
    ImageNet weights of another)."""
    rows = []
    for spec in (s.strip() for s in text.split(",")):
        if not spec:
            continue
        spec, _, weights = spec.partition("=")
        name, _, size = spec.partition("@")
        name, _, alpha = name.partition(":")
        try:
            rows.append(Row(backbone=name.strip(), alpha=float(alpha) if alpha else None,
                            size=int(size) if size else None, weights=weights.strip() or default_weights))
        except ValueError:
            raise UserError(f"--backbones {spec!r}: expected NAME[:ALPHA][@SIZE][=WEIGHTS]") from None
    if not rows:
        raise UserError(f"--backbones {text!r} names no backbone; e.g. mobilenet_v2:0.35@128,efficientnet_lite0")
    return rows


def load_preset(name_or_path: str) -> BenchConfig:
    p = Path(name_or_path)
    if not p.is_file():
        p = PRESETS / f"{name_or_path}.json"
    if not p.is_file():
        have = ", ".join(sorted(f.stem for f in PRESETS.glob("*.json")))
        raise UserError(f"preset {name_or_path!r} not found; choose one of {have} or give a JSON file")
    try:
        return BenchConfig.from_dict(json.loads(p.read_text()))
    except (ValueError, TypeError) as e:
        raise UserError(f"{p}: not a valid bench preset ({e})") from None



def data_fingerprint(data: str) -> str:
    """Which photos DATA holds, cheaply (no decoding): every image's path, class, given split,
    size and mtime. Two bench runs may share a trained row only when this matches."""
    if data.startswith("tfds:"):
        return data
    from trainer.data.scan import discover

    root = Path(data)
    records, _, _, _ = discover(root)
    h = hashlib.sha256()
    for r in records:
        st = (root / r.rel).stat()
        h.update(f"{r.rel}\t{r.label}\t{r.given_split}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _remove_own_folder(folder: Path, what: str) -> None:
    """Remove a folder the bench made (links and its own marker files only); anything else in it
    is the user's, so refuse instead of deleting it."""
    if not folder.exists():
        return
    foreign = [p for p in folder.rglob("*") if not (p.is_symlink() or p.is_dir() or p.name == ".complete")]
    if foreign:
        raise UserError(f"{folder}: holds files the bench did not make (e.g. {foreign[0].name}); "
                        f"choose another --out for {what}")
    shutil.rmtree(folder)


def stratified_subset(data: str, out: Path, per_class: int, seed: int) -> Path:
    """``per_class`` random photos of each class of DATA, linked into ``out`` (same seed, same set).
    Reused only when the marker says it was made from the same photos, count and seed."""
    from trainer.data import load_dataset
    from trainer.data.sampling import stratified_sample

    want = {"source": str(Path(data).resolve()), "source_fingerprint": data_fingerprint(data),
            "per_class": per_class, "seed": seed}
    marker = out / ".complete"
    try:
        if json.loads(marker.read_text()) == want:
            return out
    except (OSError, ValueError):
        pass
    if out.exists():
        _log(f"{out}: made from other photos or settings; linking it again")
        _remove_own_folder(out, "the data subset")
    ds = load_dataset(data)
    records = sorted(ds.images, key=lambda r: r.rel)
    chosen, _ = stratified_sample(records, [ds.classes.index(r.label) for r in records], seed=seed,
                                  per_class=per_class)
    for rec in chosen:
        (out / rec.label).mkdir(parents=True, exist_ok=True)
        os.symlink((ds.root / rec.rel).resolve(), out / rec.label / rec.rel.replace("/", "__"))
    write_json(marker, want)
    return out


def _row_config(row: Row, cfg: BenchConfig, data: str, run: Path):
    from trainer.config import TrainConfig

    return TrainConfig(data=data, out=str(run), backbone=row.backbone, alpha=row.alpha, size=row.size,
                       weights=row.weights, seed=cfg.seed, fractions=cfg.fractions, epochs=cfg.head_epochs)


def _stamp(tc, data: str) -> dict:
    """What a row's run was trained from: the photos (by fingerprint) and every training setting."""
    train = {k: v for k, v in tc.to_dict().items() if k != "out"}
    return json.loads(json.dumps({"data_fingerprint": data_fingerprint(data), "train": train}))


def _differences(have: dict, want: dict) -> list[str]:
    if not have:
        return ["no record of what it was trained from"]
    out = ["photos"] if have.get("data_fingerprint") != want["data_fingerprint"] else []
    old, new = have.get("train", {}), want["train"]
    return out + sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _train_row(row: Row, cfg: BenchConfig, data: str, out: Path, track: str | None = None) -> tuple[Path, str]:
    """The row's trained run and where its weights came from. A run this bench trained before is
    reused only when its stamp (data fingerprint + training settings) matches; an interrupted
    one with a matching stamp is resumed; otherwise it is trained again."""
    from trainer.backbones import BackboneError
    from trainer.train import train

    def weights_of(run: Path) -> str:
        w = read_config(run).train.get("weights", "imagenet")
        return "random init" if w == "none" else w
    if row.run:
        return Path(row.run), weights_of(Path(row.run))
    if row.subset_per_class:
        data = str(stratified_subset(data, out / f"data-{row.subset_per_class}", row.subset_per_class, cfg.seed))
    run = out / "runs" / row.name
    stamp_file = out / "runs" / f"{row.name}.stamp.json"
    tc = _row_config(row, cfg, data, run)
    want = _stamp(tc, data)
    try:
        have = json.loads(stamp_file.read_text())
    except (OSError, ValueError):
        have = {}
    same = have == want
    if same and (run / R.METRICS).exists():
        return run, weights_of(run)
    if same and (run / R.CONFIG).exists():
        _log(f"{row.name}: resuming the interrupted run {run}")
        train(tc, resume=True, track=track)
        return run, weights_of(run)
    if run.exists():
        why = ", ".join(_differences(have, want)) or "stopped before it saved its settings"
        _log(f"{row.name}: {run} was trained from other inputs ({why}); training it again")
        shutil.rmtree(run)
    write_json(stamp_file, want)
    try:
        train(tc, track=track)
        weights = row.weights
    except BackboneError as e:
        if row.weights != "imagenet" or not row.latency_only:
            raise
        _log(f"{row.name}: {e}\n{row.name}: timing it with random init (latency only)")
        tc.weights = "none"
        train(tc, track=track)
        weights = "random init"
    return run, weights


def gate(row: dict, cfg: BenchConfig) -> str:
    """A verified artifact's status under the preset's limits. Latency-only rows (random init,
    trained on a handful of photos) have no accuracy worth gating."""
    if row.get("latency_only") and row.get("weights") == "random init":
        return "ok"
    g = row.get("gate")
    full_int8 = row["precision"] in INT8
    if full_int8 and g and g["drop_points"] > cfg.max_int8_drop and g["p_value"] < ALPHA:
        # the converter's paired gate (converter.gate) at this preset's budget: a photo or two on a
        # small split is not a failure
        return (f"verification failed: {row['precision']} lost {g['lost']} and gained {g['gained']} of {g['n']} photos "
                f"(drop {g['drop_points']:.2f} pts > {cfg.max_int8_drop}, McNemar p {g['p_value']:.3g})")
    if full_int8 and row["agreement"] < cfg.min_agreement:
        return f"verification failed: agreement {row['agreement']:.3f} < {cfg.min_agreement}"
    return "ok"


def run_bench(cfg: BenchConfig, out: Path, reuse: list[str] = (), command: str | None = None,
              track: str | None = None) -> dict:
    """Train/convert/verify/time every row; writes the report files into ``out``. ``track``: an
    MLflow URI (default $MLFLOW_TRACKING_URI): each row's train and convert, and the report."""
    from edge_runtime.benchmark import machine_info
    from trainer.runs.tracking import Tracker

    tracker = Tracker(track, explicit=track is not None)

    from .report import write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = cfg.data
    if not Path(data).exists() and not data.startswith("tfds:"):
        raise UserError(f"{data}: data folder not found")
    if cfg.subset_per_class:
        data = str(stratified_subset(data, out / "data", cfg.subset_per_class, cfg.seed))
    for r in reuse:                       # --reuse RUN: match rows by backbone/alpha/size
        c = read_config(r)
        for row in cfg.rows:
            if row.backbone == c.backbone_name and (row.size or c.size) == c.size and \
                    (row.alpha is None or row.alpha == c.alpha):
                row.run = r
    cores = os.cpu_count() or 1
    threads = cfg.threads or sorted({1, cores})
    subset = f"stratified subset {cfg.subset_per_class}/class of {cfg.data}" if cfg.subset_per_class else "full"
    split_note = (f"{data} ({subset}), "
                  f"split {'/'.join(str(int(f * 100)) for f in cfg.fractions)} seed {cfg.seed}")
    t_start = time.time()
    rep = {"kind": "edgetl-bench/1", "preset": cfg.name, "command": command, "config": cfg.to_dict(),
           "machine": machine_info(),
           "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "data": split_note, "threads": threads,
           "method": {"runs": cfg.runs, "warmup": cfg.warmup, "frame": "640x480 RGB uint8 (end-to-end)",
                      "process": "one process for all rows"},
           "complete": False, "rows_planned": [row.name for row in cfg.rows], "rows": []}
    for i, row in enumerate(cfg.rows, 1):
        _log(f"[{i}/{len(cfg.rows)}] {row.name}")
        rep["rows"] += _bench_row(row, cfg, data, out, threads, track)
        rep["seconds"] = round(time.time() - t_start, 1)
        write_report(rep, out)   # after every row: a crash late in a long bench keeps the rows done
    rep["complete"] = True
    write_report(rep, out)
    _track(tracker, rep, out)
    return rep


def _bench_row(row: Row, cfg: BenchConfig, data: str, out: Path, threads: list[int], track) -> list[dict]:
    """One backbone row: train (or reuse), convert every precision, time each artifact."""
    from converter.convert import convert
    from edge_runtime import Classifier
    from edge_runtime.benchmark import time_artifact

    base = {"row": row.name, "backbone": row.backbone, "alpha": row.alpha, "latency_only": row.latency_only}
    try:
        run, weights = _train_row(row, cfg, data, out, track)
    except UserError as e:
        _log(f"  {row.name}: train failed: {e}")   # on the console now, not only in the table
        return [{**base, "precision": "-", "status": f"train failed: {e}"}]
    rcfg = read_config(run)
    base.update(size=rcfg.size, alpha=rcfg.alpha, weights=weights, run=str(run))
    deploy = run / R.DEPLOY
    try:
        man = convert(run, cfg.precisions, out=deploy, calibration_samples=cfg.calibration_samples,
                      max_drop=100.0, force=True, threads=None, track=track)
    except UserError as e:
        _log(f"  {row.name}: export failed: {e}")
        return [{**base, "precision": ",".join(cfg.precisions), "status": f"export failed: {e}"}]
    results = []
    for art in man["artifacts"]:
        if art["precision"] not in cfg.precisions:
            continue
        v = art["verification"]
        row_out = {**base, "precision": art["precision"], "status": "ok", "file": str(deploy / art["file"]),
                   "sha256": art["sha256"], "size_mb": round(art["bytes"] / 1e6, 3),
                   "accuracy": v["accuracy"], "class_avg_accuracy": v.get("class_avg_accuracy"),
                   "keras_accuracy": v["keras_accuracy"], "drop_points": v["drop_points"],
                   "agreement": v["agreement"], "test_n": v["n"], "fully_delegated": v["fully_delegated"],
                   "not_delegated": v["not_delegated"], "float_ops": v["float_ops"],
                   "ops": v["ops"], "gate": v.get("gate"), "latency": {}}
        row_out["status"] = gate(row_out, cfg)
        for n in threads:
            clf = Classifier(deploy, threads=n, precision=art["precision"])
            row_out["latency"][str(n)] = time_artifact(clf, cfg.runs, cfg.warmup)
            del clf
        results.append(row_out)
        lat = row_out["latency"][str(threads[-1])]
        _log(f"    {art['precision']:8s} acc {v['accuracy']:.4f}  raw {lat['raw_ms']['median']:.2f} ms "
             f"({threads[-1]} thr)  {row_out['status']}")
    return results


def _track(tracker, rep: dict, out: Path) -> None:
    """The bench as one MLflow run: its settings, each row's accuracy and latency, the report."""
    if not tracker.on:
        return
    from trainer.runs.compare import flatten
    tracker.start(out, "bench", tags={"preset": rep["preset"]})
    tracker.params(flatten({"bench": rep["config"]}))
    values = {}
    for r in rep["rows"]:
        if r.get("status") != "ok" or "accuracy" not in r:
            continue
        key = f"{r['row']}/{r['precision']}"
        values[f"{key}/accuracy"] = r["accuracy"]
        values[f"{key}/size_mb"] = r["size_mb"]
        for t, lat in r.get("latency", {}).items():
            values[f"{key}/e2e_ms_{t}t"] = lat["end_to_end_ms"]["median"]
    tracker.metrics(values)
    for f in sorted(Path(out).glob("report.*")) + sorted(Path(out).glob("*.png")):
        tracker.artifact(f, "report")
    tracker.end(all(r.get("status") == "ok" for r in rep["rows"]))
