from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cv.errors import ProcessingError, Reason
from cv.model.network import LoadedModel, ModelIdentity, embed_frames, load_backbone, sha256_file
from cv.synthetic import SyntheticScan
from cv.video.frames import VideoLimits, probe_video, sample_frames
from scanflow.models.registry import BACKBONE_IDENTITY


def test_packaged_weights_match_their_recorded_hash(weights: Path) -> None:
    assert sha256_file(weights) == BACKBONE_IDENTITY.sha256


def test_embeddings_are_unit_vectors_and_batch_independent(backbone: LoadedModel) -> None:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for _ in range(5)]
    one = embed_frames(backbone, frames, batch_size=1)
    many = embed_frames(backbone, frames, batch_size=4)
    assert one.shape == (5, 1280)
    np.testing.assert_allclose(np.linalg.norm(one, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(one, many, atol=1e-4)


def test_same_view_is_closer_than_other_views(
    backbone: LoadedModel, good_scan: SyntheticScan
) -> None:
    info = probe_video(good_scan.path, VideoLimits())
    kept = []
    sample_frames(
        good_scan.path, info, VideoLimits(), sample_fps=3, max_side=320, on_frame=kept.append
    )
    views = [good_scan.frames[k.quality.index].view for k in kept]
    clean = [i for i, k in enumerate(kept) if not good_scan.frames[k.quality.index].blurred]
    emb = embed_frames(backbone, [kept[i].rgb for i in clean])
    sim = emb @ emb.T
    same, other = [], []
    for a in range(len(clean)):
        for b in range(a + 1, len(clean)):
            (same if views[clean[a]] == views[clean[b]] else other).append(sim[a, b])
    assert np.mean(same) > np.mean(other) + 0.05


def test_wrong_hash_is_a_model_error(weights: Path) -> None:
    bad = ModelIdentity("m", "1", "0" * 64)
    with pytest.raises(ProcessingError) as err:
        load_backbone(weights, bad, torch.device("cpu"))
    assert err.value.reason is Reason.MODEL_ERROR
    assert "sha256" in err.value.message


def test_truncated_or_foreign_weights_are_a_model_error(tmp_path: Path, weights: Path) -> None:
    cut = tmp_path / "cut.pth"
    cut.write_bytes(weights.read_bytes()[:100_000])
    foreign = tmp_path / "foreign.pth"
    torch.save({"layer.weight": torch.zeros(3, 3)}, foreign)
    for path in (cut, foreign):
        with pytest.raises(ProcessingError) as err:
            load_backbone(path, ModelIdentity("m", "1", sha256_file(path)), torch.device("cpu"))
        assert err.value.reason is Reason.MODEL_ERROR
        assert "cannot load" in err.value.message


def test_missing_weights_are_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ProcessingError) as err:
        load_backbone(tmp_path / "none.pth", BACKBONE_IDENTITY, torch.device("cpu"))
    assert err.value.reason is Reason.MODEL_ERROR


@pytest.mark.gpu
def test_cuda_embeddings_match_cpu(weights: Path) -> None:
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (224, 224, 3), dtype=np.uint8) for _ in range(8)]
    cpu = embed_frames(load_backbone(weights, BACKBONE_IDENTITY, torch.device("cpu")), frames)
    gpu = embed_frames(load_backbone(weights, BACKBONE_IDENTITY, torch.device("cuda")), frames)
    assert float(np.mean(np.sum(cpu * gpu, axis=1))) > 0.99  # bf16 autocast on CUDA
