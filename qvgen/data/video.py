"""Video decoding (PyAV): a clip of `frames` frames at `fps`, resized to cover (height, width) and centre-cropped,
as a float tensor [3, F, H, W] in [-1, 1] (the range diffusers' video VAEs take)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from qvgen_kernels.errors import fail

OP = "qvgen precompute"


def _decode_rgb(path: Path, frames: int, fps: float | None) -> tuple[list[torch.Tensor], list[float]]:
    """The frames of the first video stream as uint8 [H, W, 3] tensors with their times in seconds, up to
    the first one past the requested span (long videos are not decoded whole)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            decoded, times = [], []
            for frame in container.decode(stream):
                decoded.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))
                times.append(float(frame.time) if frame.time is not None
                             else len(times) / float(stream.average_rate or 1))
                if len(decoded) >= frames_needed(times, frames, fps):
                    break
    except (av.error.FFmpegError, ValueError, OSError) as e:
        fail(OP, "video", "a readable video file", f"{path} ({type(e).__name__}: {e})")
    if not decoded:
        fail(OP, "video", "a video with at least one decodable frame", f"{path} (no frames)")
    return decoded, times


def frames_needed(times: list[float], frames: int, fps: float | None) -> float:
    """How many decoded frames suffice: `frames`, or (with fps) one past the span's end time."""
    if fps is None:
        return frames
    return len(times) + 1 if times[-1] <= times[0] + (frames - 1) / fps else len(times)


def _pick(times: list[float], frames: int, fps: float | None, path: Path) -> list[int]:
    """Indices of the decoded frames nearest to t0 + k / fps (every frame when fps is None)."""
    if fps is None:
        idx = list(range(frames))
    else:
        t0, idx, j = times[0], [], 0
        for k in range(frames):
            target = t0 + k / fps
            while j + 1 < len(times) and abs(times[j + 1] - target) <= abs(times[j] - target):
                j += 1
            idx.append(j)
        # The last sample must lie within the clip (half a source frame of slack).
        slack = (times[-1] - times[-2]) / 2 if len(times) > 1 else 0.0
        if t0 + (frames - 1) / fps > times[-1] + slack + 1e-6:
            fail(OP, "video", f"a clip of at least {(frames - 1) / fps:.3f} s for {frames} frames at {fps} fps",
                 f"{path} ({times[-1] - t0:.3f} s)")
    if idx[-1] >= len(times):
        fail(OP, "video", f"at least {frames} frames", f"{path} ({len(times)} frames)")
    return idx


def resize_crop(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[F, H0, W0, 3] uint8 -> [3, F, height, width] float in [-1, 1]: scale to cover, centre crop."""
    x = video.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [F, 3, H0, W0]
    h0, w0 = x.shape[-2:]
    scale = max(height / h0, width / w0)
    size = (max(height, round(h0 * scale)), max(width, round(w0 * scale)))
    if size != (h0, w0):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    x = x[..., top:top + height, left:left + width]
    return x.clamp_(-1.0, 1.0).permute(1, 0, 2, 3).contiguous()


def read_clip(path: str | Path, frames: int, height: int, width: int, fps: float | None = None) -> torch.Tensor:
    """The first `frames` frames of `path` sampled at `fps` (None: consecutive source frames), as
    [3, frames, height, width] in [-1, 1]. Unreadable or too short videos raise a ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        fail(OP, "video", "an existing video file", str(path))
    decoded, times = _decode_rgb(path, frames, fps)
    if fps is None and len(decoded) < frames:
        fail(OP, "video", f"at least {frames} frames", f"{path} ({len(decoded)} frames)")
    idx = _pick(times, frames, fps, path)
    return resize_crop(torch.stack([decoded[i] for i in idx]), height, width)


def write_clip(path: str | Path, video: torch.Tensor, fps: int = 8) -> None:
    """Encode uint8 frames [F, H, W, 3] as an MPEG-4 file (tests and examples make their own clips)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = int(video.shape[1]), int(video.shape[2])
        stream.pix_fmt = "yuv420p"
        for frame in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame.numpy(), format="rgb24")))
        container.mux(stream.encode())
