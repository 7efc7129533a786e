"""The frame model: a MobileNetV2 backbone (torchvision's layout, so its ImageNet weights
load as they are) that turns frames into L2-normalised 1280-d embeddings.

Weights are read from a local file whose sha256 must match; nothing is fetched. For
inference each BatchNorm is folded into the convolution before it (the same arithmetic,
about twice as fast on CPU), and frames travel to the device as uint8 in NHWC order, which
is channels_last once permuted: one resize per frame into a shared buffer is the only copy
on the host.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from cv.errors import ProcessingError, Reason
from cv.model.predictions import EMBEDDING_DIM

INPUT_SIZE = 224
# ImageNet statistics on 0..255 RGB, as torchvision trained the backbone.
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def _conv_bn(
    inp: int, out: int, kernel: int = 3, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU6(inplace=True),
    )


class _InvertedResidual(nn.Module):
    def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        self.use_res = stride == 1 and inp == out
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(inp, hidden, kernel=1))
        layers += [
            _conv_bn(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.conv(x)
        return x + y if self.use_res else y


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) with torchvision's parameter names."""

    _SETTING = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(3, 32, stride=2)]
        inp = 32
        for t, c, n, s in self._SETTING:
            for i in range(n):
                layers.append(_InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        layers.append(_conv_bn(inp, EMBEDDING_DIM, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(EMBEDDING_DIM, num_classes))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled features, L2-normalised, float32."""
        f = self.features(x).mean(dim=(2, 3))
        return nn.functional.normalize(f.float(), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x).mean(dim=(2, 3)))
        return out


@dataclass(frozen=True)
class Backbone:
    """The backbone a package runs on, and where its weights come from."""

    name: str
    version: str
    sha256: str
    source: str = ""
    licence: str = ""


@dataclass(frozen=True)
class ModelIdentity:
    """What the manifest records about the model that produced a result."""

    name: str
    version: str
    sha256: str


@dataclass
class LoadedModel:
    """A backbone on a device, ready for ``embed_frames``."""

    identity: ModelIdentity
    net: MobileNetV2
    device: torch.device


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pick_device(preference: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; anything else is taken as a torch device."""
    if preference != "auto":
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def fold_batchnorm(net: nn.Module) -> None:
    """Fold every Conv2d → BatchNorm2d pair into the convolution, in place (eval only).

    y = γ (conv(x) + b − μ) / √(σ² + ε) + β is a convolution with scaled weights and a new
    bias, so the BatchNorm becomes an Identity and inference does one pass instead of two.
    """
    for seq in net.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            assert bn.running_var is not None and bn.running_mean is not None
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            with torch.no_grad():
                conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
                conv.bias = nn.Parameter(bn.bias + (bias - bn.running_mean) * scale)
            seq[i + 1] = nn.Identity()


def load_backbone(weights: Path, identity: ModelIdentity, device: torch.device) -> LoadedModel:
    """Load MobileNetV2 weights after checking their sha256.

    Args:
        weights: a torchvision-layout state dict file.
        identity: name, version and the sha256 the file must have.
        device: where to run.
    Returns:
        The model in eval mode on ``device``, BatchNorm folded into the convolutions.
    Raises:
        ProcessingError: model_error for a missing file, a hash mismatch or weights
            that do not fit the architecture.
    """
    if not weights.is_file():
        raise ProcessingError(Reason.MODEL_ERROR, f"model weights {weights} do not exist.")
    digest = sha256_file(weights)
    if digest != identity.sha256:
        raise ProcessingError(
            Reason.MODEL_ERROR,
            f"model {identity.name} {identity.version}: "
            f"{weights.name} has sha256 {digest[:12]}…, expected "
            f"{identity.sha256[:12]}…; the file is damaged or not this model.",
        )
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net = MobileNetV2()
        net.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - any load failure is a model error
        raise ProcessingError(
            Reason.MODEL_ERROR,
            f"model {identity.name} {identity.version}: "
            f"cannot load {weights.name} ({type(exc).__name__}: "
            f"{str(exc)[:200]}).",
        ) from exc
    net.eval()
    fold_batchnorm(net)
    net.to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return LoadedModel(identity, net, device)


def preprocess(
    frames: Sequence[npt.NDArray[np.uint8]], out: npt.NDArray[np.uint8] | None = None
) -> npt.NDArray[np.uint8]:
    """Centre-crop each frame to a square and resize it to 224, into one uint8 buffer.

    Args:
        frames: RGB uint8 arrays of any size.
        out: a C-contiguous N' x 224 x 224 x 3 uint8 buffer with N' >= len(frames) to
            reuse; a new one is made when None.
    Returns:
        The first len(frames) rows of ``out``: N x 224 x 224 x 3 uint8 RGB (NHWC).
        Normalisation happens on the device (``to_input``), so the host moves a quarter
        of the bytes a float32 batch would need.
    """
    n = len(frames)
    if out is None:
        out = np.empty((n, INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
    for i, rgb in enumerate(frames):
        h, w = rgb.shape[:2]
        s = min(h, w)
        y0, x0 = (h - s) // 2, (w - s) // 2
        # The crop is a view and the resize writes straight into the batch buffer.
        cv2.resize(
            rgb[y0 : y0 + s, x0 : x0 + s],
            (INPUT_SIZE, INPUT_SIZE),
            dst=out[i],
            interpolation=cv2.INTER_AREA,
        )
    return out[:n]


def to_input(batch: npt.NDArray[np.uint8], device: torch.device) -> torch.Tensor:
    """N x 224 x 224 x 3 uint8 → normalised N x 3 x 224 x 224 float32 on ``device``.

    Permuting NHWC gives NCHW in channels_last layout without a copy; the float conversion
    keeps that layout, which is what MobileNetV2's depthwise convolutions run fastest on.
    """
    x = torch.from_numpy(batch)
    # Pinned host memory lets the copy to a GPU run asynchronously.
    x = x.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else x.to(device)
    t = x.permute(0, 3, 1, 2).float()
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    inv_std = torch.tensor([1.0 / s for s in STD], device=device).view(1, 3, 1, 1)
    return t.sub_(mean).mul_(inv_std)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads, then restore the previous count.

    torch's thread count is process-wide; this keeps a chosen count local to one call.
    None leaves it alone.
    """
    if threads is None or threads == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def iter_embeddings(
    model: LoadedModel,
    frames: Sequence[npt.NDArray[np.uint8]],
    batch_size: int = 16,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(start index, N x 1280 float32 embeddings on the model's device) per batch.

    Call inside ``torch.inference_mode()``; one host buffer serves every batch.
    """
    use_bf16 = model.device.type == "cuda"
    buf = np.empty((min(batch_size, len(frames)), INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
    for start in range(0, len(frames), batch_size):
        batch = preprocess(frames[start : start + batch_size], buf)
        x = to_input(batch, model.device)
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            emb = model.net.embed(x)
        yield start, emb


def embed_frames(
    model: LoadedModel,
    frames: Sequence[npt.NDArray[np.uint8]],
    batch_size: int = 16,
    threads: int | None = None,
) -> npt.NDArray[np.float32]:
    """Embed RGB frames in batches.

    Args:
        model: from ``load_backbone``.
        frames: RGB uint8 arrays of any size.
        batch_size: frames per forward pass.
        threads: CPU threads for this call (None: torch's current setting).
    Returns:
        N x 1280 float32, each row of unit length.
    """
    out = np.empty((len(frames), EMBEDDING_DIM), np.float32)
    with torch_threads(threads), torch.inference_mode():
        for start, emb in iter_embeddings(model, frames, batch_size):
            out[start : start + len(emb)] = emb.cpu().numpy()
    return out
