"""Fixtures for the detector tests: a network tripwire and toy-world data with ground truth."""

from __future__ import annotations

import socket

import pytest
from datasets import Dataset

from datasets_icd.features import ICD_FEATURES
from datasets_icd.toyworld import ToyWorld, ToyWorldConfig


@pytest.fixture
def no_network(monkeypatch):
    """Any connection or DNS lookup fails and is recorded, so a test can assert that nothing tried to download."""
    attempts: list[tuple] = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


@pytest.fixture
def save_toy_icd():
    """Call it to write a toy-world ICD with ground truth: ``save_toy_icd(path, num_images, size, seed, rates)``."""
    return _save_toy_icd


def _save_toy_icd(path, num_images: int, size: int, seed: int, concept_rates: dict[str, float]) -> Dataset:
    """A toy-world Implicit Concept Dataset with ground-truth boxes, saved with ``save_to_disk``."""
    world = ToyWorld(ToyWorldConfig(size=size, concept_rates=concept_rates, seed=seed))
    rows: dict[str, list] = {name: [] for name in ICD_FEATURES}
    for i in range(num_images):
        sample = world.sample(i)
        rows["image"].append(sample.image)
        rows["caption"].append(sample.caption)
        rows["geom_caption"].append(sample.caption)
        rows["concepts"].append(sample.concepts)
        rows["width"].append(size)
        rows["height"].append(size)
        rows["source_id"].append(str(i))
    dataset = Dataset.from_dict(rows, features=ICD_FEATURES)
    dataset.save_to_disk(str(path))
    return dataset


@pytest.fixture(scope="session")
def random_yolo_weights(tmp_path_factory):
    """An untrained yolov8n for classes watermark, qrcode, text, written as train-yolo writes weights."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from detectors.yolo import save_yolo

    torch.manual_seed(0)
    model = DetectionModel(cfg="yolov8n.yaml", nc=3, verbose=False)
    model.names = {0: "watermark", 1: "qrcode", 2: "text"}
    return save_yolo(model, tmp_path_factory.mktemp("yolo") / "random.safetensors", imgsz=64)
