"""The CUDA path: bf16 autocast, channels_last, uint8 transfer. Skipped without a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cv.model.heads import classify_frames
from cv.model.network import INPUT_SIZE, preprocess, to_input
from cv.synthetic import ScanSpec, render_scan
from scanflow.models.registry import DEFAULT_PACKAGE, load_package

pytestmark = pytest.mark.gpu


def test_cuda_input_is_normalised_on_the_device_in_channels_last() -> None:
    frames = [np.full((120, 160, 3), 200, np.uint8)]
    x = to_input(preprocess(frames), torch.device("cuda"))
    assert x.is_cuda and x.dtype == torch.float32 and x.shape == (1, 3, INPUT_SIZE, INPUT_SIZE)
    assert x.is_contiguous(memory_format=torch.channels_last)
    cpu = to_input(preprocess(frames), torch.device("cpu"))
    torch.testing.assert_close(x.cpu(), cpu)


def test_cuda_views_and_embeddings_match_cpu(tmp_path: Path) -> None:
    import av

    scan = render_scan(tmp_path / "s.mp4", ScanSpec(duration_s=4.0, fps=8.0, seed=3))
    with av.open(str(scan.path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    cpu = load_package(DEFAULT_PACKAGE, tmp_path / "cache", torch.device("cpu"))
    gpu = load_package(DEFAULT_PACKAGE, tmp_path / "cache", torch.device("cuda"))
    a = classify_frames(cpu, frames, batch_size=16)
    b = classify_frames(gpu, frames, batch_size=16)
    assert float(np.mean(np.sum(a.embeddings * b.embeddings, axis=1))) > 0.99  # bf16
    assert float(np.mean(a.views == b.views)) >= 0.9
