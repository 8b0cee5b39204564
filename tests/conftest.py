"""Shared fixtures: a small synthetic dataset prepared and split exactly as the DAG would."""
import pytest

from ltbench.data import lt, sources


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """Prepared npz + an IF-10 split (150 -> 15 images: one many, two medium, one few class) of a 4-class 12x12 synthetic set."""
    root = tmp_path_factory.mktemp("synth")
    arrays = sources.load_source("synthetic", "", options=dict(num_classes=4, per_class=200, test_per_class=30,
                                                                  size=12, channels=3, seed=0))
    data = root / "synth.npz"
    sources.save_prepared(arrays, str(data))
    split = lt.make_split(arrays["train_y"], arrays["test_y"], 10, max_per_class=150, val_per_class=10)
    split_path = root / "if10.npz"
    lt.save_split(split, str(split_path))
    return {"data": str(data), "split": str(split_path), "root": root}
