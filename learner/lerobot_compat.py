"""Make ``lerobot`` importable on our CPU-only torch; import lerobot through ``load_lerobot()`` only.

lerobot 0.4.4 pins torch < 2.11, so it is installed without dependencies next to torch 2.13 (CPU) and
torchvision 0.28. torchvision's compiled ops (``torchvision/_C.so``) are built against another torch and do
not load here; torchvision's ``__init__`` then still calls ``torch.library.register_fake("torchvision::nms")``
(and ``qnms``) unconditionally, which fails because the operators were never defined, so ``import torchvision``
and everything that imports it (lerobot's dataset module does, for image transforms) raises.

torchvision must not sit in the shared virtualenv: ``transformers`` imports it from ``image_utils`` whenever it
is installed (``modeling_layers`` -> ``processing_utils`` -> ``image_utils``), so a torchvision that cannot
import breaks every transformers model in every process that did not run this shim first. It therefore lives
in a private directory outside the work tree (``MOLMOFLEET_TORCHVISION_DIR``, default
``~/.cache/molmofleet/torchvision-0.28``, filled by
``pip install --no-deps --target ~/.cache/molmofleet/torchvision-0.28 torchvision==0.28.0``) that only
``load_lerobot()`` puts on ``sys.path``; an installed torchvision is used as is.

What this shim does, before torchvision is imported:
1. defines the two operator schemas exactly as torchvision's C++ library declares them
   (``nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor`` and ``qnms`` alike), so the fake-kernel
   registrations succeed; the other compiled ops register only when ``_C.so`` loaded, so they need nothing;
   they stay without kernels: ``torchvision.ops`` keeps raising its own clear "Couldn't load custom C++ ops"
   error if anyone calls it (lerobot's datasets use only torchvision's image transforms);
2. routes lerobot's video decoding to ``decode_video_frames_pyav`` (below): torchcodec is not installable on
   this torch and torchvision 0.28 has no ``io.VideoReader`` any more, which lerobot's "pyav" backend still
   calls, so without this a video-feature dataset cannot be read at all;
3. sets ``HF_HUB_OFFLINE=1`` unless the caller chose otherwise: datasets are read from local directories and
   nothing may be downloaded at run time.

Video decoding therefore always goes through PyAV; pass ``video_backend="pyav"`` to LeRobotDataset (the
default here anyway, as torchcodec is absent).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

_LIB: torch.library.Library | None = None  # kept alive: dropping the Library object unregisters its ops


def _torchvision_ops_loaded() -> bool:
    try:
        torch.ops.torchvision.nms  # noqa: B018 - attribute access raises when the op is undefined
        return True
    except (AttributeError, RuntimeError):
        return False


def register_torchvision_ops() -> None:
    """Define the nms/qnms schemas when torchvision's compiled library cannot. Idempotent."""
    global _LIB
    if _LIB is not None or _torchvision_ops_loaded():
        return
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB = lib


TORCHVISION_DIR = Path(os.environ.get("MOLMOFLEET_TORCHVISION_DIR", "~/.cache/molmofleet/torchvision-0.28"))


def _find_torchvision() -> None:
    if importlib.util.find_spec("torchvision") is not None:
        return
    private = TORCHVISION_DIR.expanduser()
    if (private / "torchvision" / "__init__.py").exists():
        sys.path.append(str(private))  # appended: never shadows anything the venv has
        importlib.invalidate_caches()
        return
    raise ImportError(
        f"lerobot needs torchvision, found neither in the virtualenv nor in {private}; install it there with "
        f"`pip install --no-deps --target {private} torchvision==0.28.0` (not into the venv: a torchvision "
        "whose compiled ops do not load breaks transformers in every other process)"
    )


def decode_video_frames_pyav(
    video_path: str | Path, timestamps: list[float], tolerance_s: float, backend: str | None = None
) -> torch.Tensor:
    """The frames nearest to ``timestamps`` (seconds) -> (N, C, H, W) float32 in [0, 1], as lerobot's decoders.

    Seeks to the keyframe at or before the first timestamp, decodes forward to the last one, and fails with
    lerobot's FrameTimestampError when a query has no frame within ``tolerance_s``.
    """
    import av
    from lerobot.datasets.video_utils import FrameTimestampError

    first, last = min(timestamps), max(timestamps)
    frames: list[np.ndarray] = []
    times: list[float] = []
    with av.open(str(video_path)) as container:
        stream = container.streams.video[0]
        container.seek(int(first / stream.time_base), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            t = float(frame.pts * stream.time_base)
            frames.append(frame.to_ndarray(format="rgb24"))  # (H, W, 3) uint8
            times.append(t)
            if t >= last:
                break
    if not frames:
        raise FrameTimestampError(f"no frame decoded from {video_path} at {first:.4f}..{last:.4f} s")
    loaded = np.asarray(times)
    nearest = np.abs(loaded[None, :] - np.asarray(timestamps)[:, None]).argmin(1)
    gaps = np.abs(loaded[nearest] - np.asarray(timestamps))
    if (gaps >= tolerance_s).any():
        raise FrameTimestampError(
            f"{video_path}: queries {np.asarray(timestamps)[gaps >= tolerance_s]} have no "
            f"frame within {tolerance_s} s (nearest loaded: {loaded[nearest][gaps >= tolerance_s]})"
        )
    picked = np.stack([frames[i] for i in nearest])  # (N, H, W, 3)
    return torch.from_numpy(picked).permute(0, 3, 1, 2).float() / 255.0


def load_lerobot() -> ModuleType:
    """Apply the shim and return ``lerobot.datasets.lerobot_dataset`` (LeRobotDataset and its metadata)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    register_torchvision_ops()
    _find_torchvision()
    from lerobot.datasets import lerobot_dataset

    lerobot_dataset.decode_video_frames = decode_video_frames_pyav  # the name _query_videos calls
    return lerobot_dataset
