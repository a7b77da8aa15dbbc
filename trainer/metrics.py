"""Classification metrics from labels and probabilities (numpy only): the Azure seed's
per-class and class-averaged accuracy, confusion matrix, precision/recall/F1, ROC and AUC."""
from __future__ import annotations

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    m = np.zeros((n, n), np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m


def roc_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False/true positive rates over all thresholds for one binary problem."""
    order = np.argsort(-score, kind="mergesort")
    y, score = y[order], score[order]
    distinct = np.r_[np.nonzero(np.diff(score))[0], len(score) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    P, N = max(int(y.sum()), 1), max(int(len(y) - y.sum()), 1)
    return np.r_[0.0, fps / N], np.r_[0.0, tps / P]


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def class_averaged_accuracy(y_true, y_pred) -> float:
    """Mean of the per-class accuracies (recalls) over the classes present: each class counts the
    same however many photos it has (the Azure seed's class-averaged accuracy)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    accs = [float((y_pred[y_true == c] == c).mean()) for c in np.unique(y_true)]
    return float(np.mean(accs)) if accs else 0.0


def classification_report(y_true, probs, classes: list[str], files: list[str] | None = None) -> dict:
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    y_pred = probs.argmax(axis=1)
    n = len(classes)
    cm = confusion(y_true, y_pred, n)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    tp = np.diag(cm)
    recall = np.divide(tp, support, out=np.zeros(n), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros(n), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=(precision + recall) > 0)
    per_class, aucs = {}, []
    for i, c in enumerate(classes):
        a = None
        if 0 < support[i] < len(y_true):
            a = auc(*roc_curve((y_true == i).astype(np.int64), probs[:, i]))
            aucs.append(a)
        per_class[c] = {"accuracy": float(recall[i]), "precision": float(precision[i]), "recall": float(recall[i]),
                        "f1": float(f1[i]), "support": int(support[i]), "auc": a}
    present = support > 0
    report = {
        "n": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        "class_avg_accuracy": class_averaged_accuracy(y_true, y_pred),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }
    if files is not None:
        report["misclassified"] = [
            {"file": str(files[i]), "true": classes[y_true[i]], "predicted": classes[y_pred[i]],
             "confidence": float(probs[i, y_pred[i]])}
            for i in np.nonzero(y_pred != y_true)[0]]
    return report
