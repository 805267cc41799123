"""A PyTorch U-Net as a reference peer of the accuracy evaluation (method kind ``unet``).

Not part of the product: it answers "how far is the MPCNN family from a standard encoder-decoder
trained the same way, for the same time, on the same 2 cores?". It needs the optional ``bench``
extra (``pip install torch==2.13.0``, a CPU build): the eval scripts always register the kind, and
torch is imported only when a row trains (without it the row stops with a message that says so).
Rows: ``--variants unet:kind=unet`` (settings below).

The network (Ronneberger et al. 2015, small): ``levels`` resolutions (default 4), two 3x3 convs
(reflect padding) + batch norm + ReLU per block, ``base`` maps at full resolution doubling at
each level, 2x2 max-pooling down, 2x2 transposed convs up, skip concatenations, a 1x1 output.
Training follows the engine's: random crops, the 8 rotations and flips, Adam with a cosine decay
to 5%, fitted to the time ``budget`` (seconds), and the loss masked to the painted pixels and
balanced per class within each batch (label 0 = unpainted). Settings: ``base`` (16), ``levels``
(4), ``crop`` (256; smaller images are mirror-padded, the padding unpainted), ``batch`` (2),
``lr`` (0.001), ``budget`` (180), ``seed`` (0), ``tta`` (false: mean over the 8 rotations and flips).
"""

from __future__ import annotations

import math
import time

import eval_common as ec
import numpy as np

from napari_mpf.engine.network.dihedral import dihedral, undo_dihedral
from napari_mpf.engine.network.model import normalisation_from

UNET_DEFAULTS = dict(base=16, levels=4, crop=256, batch=2, lr=1e-3, budget=180.0, seed=0, tta=False)


def _build(in_channels: int, n_classes: int, base: int, levels: int):
    import torch
    import torch.nn as nn

    def block(i: int, o: int):
        return nn.Sequential(
            nn.Conv2d(i, o, 3, padding=1, padding_mode="reflect"), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
            nn.Conv2d(o, o, 3, padding=1, padding_mode="reflect"), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
        )

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            ch = [base * 2**k for k in range(levels)]
            self.down = nn.ModuleList([block(in_channels if k == 0 else ch[k - 1], ch[k]) for k in range(levels)])
            self.up = nn.ModuleList([nn.ConvTranspose2d(ch[k + 1], ch[k], 2, 2) for k in range(levels - 1)])
            self.dec = nn.ModuleList([block(2 * ch[k], ch[k]) for k in range(levels - 1)])
            self.out = nn.Conv2d(ch[0], n_classes, 1)

        def forward(self, x):
            skips = []
            for k, blk in enumerate(self.down):
                x = blk(x)
                if k < len(self.down) - 1:
                    skips.append(x)
                    x = torch.nn.functional.max_pool2d(x, 2)
            for k in reversed(range(len(self.up))):
                x = self.dec[k](torch.cat([skips[k], self.up[k](x)], 1))
            return self.out(x)

    return UNet()


def _as_chw(image: np.ndarray) -> np.ndarray:
    x = np.asarray(image, np.float32)
    return x[None] if x.ndim == 2 else x


def _pad_to(x: np.ndarray, h: int, w: int, mode: str = "reflect") -> np.ndarray:
    """Pad the last two axes at the bottom/right to at least ``h`` x ``w`` (mirror, or zeros)."""
    ph, pw = max(0, h - x.shape[-2]), max(0, w - x.shape[-1])
    if not (ph or pw):
        return x
    pad = [(0, 0)] * (x.ndim - 2) + [(0, ph), (0, pw)]
    if mode == "reflect" and (ph >= x.shape[-2] or pw >= x.shape[-1]):
        mode = "symmetric"
    return np.pad(x, pad, mode=mode)


@ec.register_method("unet")
def fit_unet(images: list[np.ndarray], labels: list[np.ndarray], p: dict, log=print, image_labels=None) -> ec.Fitted:
    """Train the U-Net peer for ``budget`` seconds; see the module docstring for the settings.
    Rows that differ only in ``tta`` train once."""
    p = {**UNET_DEFAULTS, **{k: v for k, v in p.items() if v is not None}}
    net_predict, seconds, info = ec.train_once(p, (images, labels), lambda: _train(images, labels, p, log), log)

    def predict(image: np.ndarray) -> np.ndarray:
        if not p["tta"]:
            return net_predict(image)
        total = sum(undo_dihedral(net_predict(np.ascontiguousarray(dihedral(image, k))), k).astype(np.float64)
                    for k in range(8))
        return (total / 8).astype(np.float32)

    return ec.Fitted(predict, seconds, dict(info))


def _train(images, labels, p: dict, log):
    """Train one U-Net; returns ``(predict, seconds, info)`` with ``predict(image) -> (H, W)``."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as exc:
        raise SystemExit("the unet peer needs PyTorch: pip install torch==2.13.0 (the bench extra)") from exc

    torch.set_num_threads(2)
    seed = int(p["seed"])
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    xs = [_as_chw(x) for x in images]
    mean, std = (a[:, None, None] for a in normalisation_from(xs))
    labs = [np.asarray(lab, np.int64) for lab in labels]
    n_classes = int(max(lab.max() for lab in labs))
    usable = [i for i, lab in enumerate(labs) if (lab > 0).any()]
    if n_classes < 2 or not usable:
        raise ValueError("the U-Net peer needs painted pixels of at least two classes")
    levels, crop, batch = int(p["levels"]), int(p["crop"]), int(p["batch"])
    factor = 2 ** (levels - 1)
    crop = -(-crop // factor) * factor
    # images smaller than a crop: mirror-padded once, the padding unpainted
    xs = [_pad_to((x - mean) / std, crop, crop) for x in xs]
    labs = [_pad_to(lab, crop, crop, mode="constant") for lab in labs]
    net = _build(xs[0].shape[0], n_classes, int(p["base"]), levels).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=float(p["lr"]))
    budget = float(p["budget"] or 0) or 180.0
    losses, step = [], 0
    while True:
        elapsed = time.perf_counter() - t0
        if elapsed >= budget:
            break
        lr = float(p["lr"]) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * elapsed / budget)))
        for group in opt.param_groups:
            group["lr"] = lr
        bx, by = [], []
        for _ in range(batch):
            i = usable[rng.integers(len(usable))]
            x, lab = xs[i], labs[i]
            y0 = rng.integers(0, x.shape[1] - crop + 1)
            x0 = rng.integers(0, x.shape[2] - crop + 1)
            xb, yb = x[:, y0:y0 + crop, x0:x0 + crop], lab[y0:y0 + crop, x0:x0 + crop]
            k = int(rng.integers(8))
            xb, yb = dihedral(xb, k), dihedral(yb, k)
            bx.append(np.ascontiguousarray(xb))
            by.append(np.ascontiguousarray(yb))
        yt = torch.from_numpy(np.stack(by))
        if not (yt > 0).any():
            continue
        logp = F.log_softmax(net(torch.from_numpy(np.stack(bx)).to(memory_format=torch.channels_last)), 1)
        present = [c for c in range(1, n_classes + 1) if (yt == c).any()]
        loss = sum(-logp[:, c - 1][yt == c].mean() for c in present) / len(present)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        losses.append(loss.item())
        if step % 200 == 0:
            log(f"    step {step} loss {np.mean(losses[-200:]):.4f} {time.perf_counter() - t0:.0f}s")
    seconds = time.perf_counter() - t0
    net.eval()

    def predict(image: np.ndarray) -> np.ndarray:
        x = (_as_chw(image) - mean) / std
        h, w = x.shape[1:]
        xp = _pad_to(x, -(-h // factor) * factor, -(-w // factor) * factor)
        with torch.no_grad():
            out = F.softmax(net(torch.from_numpy(np.ascontiguousarray(xp))[None]), 1)[0].numpy()
        return np.ascontiguousarray(out[1, :h, :w], np.float32)

    n_params = sum(int(t.numel()) for t in net.parameters())
    info = dict(steps_done=step, steps_planned=step, final_loss=float(np.mean(losses[-50:])) if losses else float("nan"),
                model=f"U-Net base {p['base']}, {levels} levels, {n_params:,} parameters")
    return predict, seconds, info
