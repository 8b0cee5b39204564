"""The confusion-matrix picture logged with every run."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def confusion_png(confusion, classes, path, title=""):
    cm = np.asarray(confusion, dtype=float)
    cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    C = len(cm)
    size = min(12, 3 + 0.35 * C)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
    if C <= 20:
        ax.set_xticks(range(C), classes, rotation=90, fontsize=8)
        ax.set_yticks(range(C), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (classes in training-frequency order of the split)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
