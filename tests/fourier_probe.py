"""A tiny exact classifier with planted frequency shortcuts, shared by the DFM, OOD and compare tests.

Class ``k``'s logit is the amplitude of the image at ``FREQS[k]``, so its DFM is known exactly.
"""

import math

import torch
from torch import nn

from fslib.inference import Classifier
from fslib.spectral import fft_centred

H = W = 8
FREQS = [(4, 5), (5, 4), (5, 6), (6, 4)]  # the one frequency each class's logit reads
# raw uint8 u maps to model input u / 80 - 1.5, written as (u / 255 - mean) / std
PROBE_MEAN, PROBE_STD = 1.5 * 80 / 255, 80 / 255


def cosine(h, w, r, s, phase=0.0):
    """A real image holding only the conjugate pair at centred (r, s), float64 (h, w)."""
    y = torch.arange(h, dtype=torch.float64)[:, None]
    x = torch.arange(w, dtype=torch.float64)[None, :]
    return torch.cos(2 * math.pi * ((r - h // 2) * y / h + (s - w // 2) * x / w) + phase)


class FourierProbe(nn.Module):
    """Logit k = amplitude at FREQS[k] (summed over channels); class 3 wins on blank input."""

    def forward(self, x):
        amp = fft_centred(x).abs().sum(1) / (H * W)
        logits = torch.stack([amp[:, r, s] for r, s in FREQS], dim=1)
        return logits + torch.tensor([0.0, 0.0, 0.0, 0.05], dtype=logits.dtype)


def planted_set(freq_of_class, per_class=6, seed=0):
    """Float images (N, 3, H, W) of random-phase cosines at each class's frequency, and labels."""
    g = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for c, (r, s) in freq_of_class.items():
        for _ in range(per_class):
            phase = float(torch.rand(1, generator=g)) * 2 * math.pi
            img = cosine(H, W, r, s, phase).expand(3, H, W) + 0.01 * torch.randn(3, H, W, generator=g, dtype=torch.float64)
            images.append(img.float())
            labels.append(c)
    return torch.stack(images), torch.tensor(labels)


def planted_dfms():
    """The true one-position DFMs of the probe, bool (4, H, W)."""
    d = torch.zeros(4, H, W, dtype=torch.bool)
    for k, (r, s) in enumerate(FREQS):
        d[k, r, s] = True
    return d


def probe_subject(name="probe"):
    """The probe as an Analysable (a Classifier), with a fixed cache key."""
    return Classifier(FourierProbe(), (PROBE_MEAN,) * 3, (PROBE_STD,) * 3, ("w", "x", "y", "z"), key=name)


def uint8_set(seed, per_class=3):
    """:func:`planted_set` as raw uint8 images that :func:`probe_subject` normalises back."""
    images, labels = planted_set({c: FREQS[c] for c in range(4)}, per_class=per_class, seed=seed)
    return ((images + 1.5) * 80).round().clamp(0, 255).to(torch.uint8), labels
