"""The STBP-tdBN ResNet-19 (seed 004; Zheng et al., AAAI 2021) built from ``snn_fast.nn``.

Layout (the document's table, CIFAR sizes at ``width=1``):

    conv1    3×3, 128, tdBN, LIF
    block 1  3 × BasicBlock(128)
    block 2  3 × BasicBlock(256), the first with stride 2
    block 3  2 × BasicBlock(512), the first with stride 2
    global average pool, FC 256, LIF, FC 10 (logits = mean over T)

BasicBlock (the document's "customized Basic Block"): conv3×3 → tdBN(α = 1) → LIF → conv3×3 →
tdBN(α = 1/√2), shortcut = identity or conv1×1 → tdBN(α = 1/√2), add, then LIF. The LIF is
``presets.lif("stbp_tdbn")``: u = 0.25·u·(1 − o) + x, θ = 0.5, rectangle surrogate of half-width 0.5;
tdBN normalises to N(0, (α·θ)²) with that θ. Tensors are ``[T, B, C, H, W]``; the convolutions run
on T·B images at once (``nn.MultiStep``).

``width`` scales every channel count (the examples use 1/8 on the CPU); ``norm`` is ``"tdbn"``,
``"bn"`` (plain ``BatchNorm2d`` over T·B, no α·θ scaling) or ``"none"`` (no normalisation: the
comparison that shows what tdBN does to firing rates). Each LIF is reachable for firing-rate hooks
through ``model.stages`` (name → list of neurons).
"""
from __future__ import annotations

import math

from torch import nn

import snn_fast.nn as snn
from snn_fast import presets

THETA = presets.preset("stbp_tdbn")["v_threshold"]


def _norm(kind, channels, alpha):
    if kind == "tdbn":
        return snn.TDBatchNorm(channels, alpha=alpha, v_threshold=THETA)
    if kind == "bn":
        return snn.MultiStep(nn.BatchNorm2d(channels))
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'tdbn', 'bn' or 'none', got {kind!r}")


def _lif(backend):
    return presets.lif("stbp_tdbn", backend=backend)


class BasicBlock(nn.Module):
    # forward applies lif1 directly to bn1's output: snn_fast.convert(fuse=True) may fuse the pair
    snn_fast_fuse_pairs = (("bn1", "lif1"),)

    def __init__(self, c_in, c_out, stride, norm, backend):
        super().__init__()
        a_res = 1 / math.sqrt(2)  # before the residual add (seed 004, docs/spec.md §7.1)
        self.conv1 = snn.MultiStep(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=norm == "none"))
        self.bn1 = _norm(norm, c_out, 1.0)
        self.lif1 = _lif(backend)
        self.conv2 = snn.MultiStep(nn.Conv2d(c_out, c_out, 3, 1, 1, bias=norm == "none"))
        self.bn2 = _norm(norm, c_out, a_res)
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(snn.MultiStep(nn.Conv2d(c_in, c_out, 1, stride, bias=norm == "none")),
                                          _norm(norm, c_out, a_res))
        else:
            self.shortcut = nn.Identity()
        self.lif2 = _lif(backend)

    def forward(self, x):
        y = self.lif1(self.bn1(self.conv1(x)))
        return self.lif2(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet19(nn.Module):
    snn_fast_fuse_pairs = (("conv1.1", "lif1"),)  # lif1(conv1(x)), conv1 ending in its norm

    def __init__(self, in_channels=3, num_classes=10, width=1.0, norm="tdbn", backend="auto"):
        super().__init__()
        c = [max(1, round(k * width)) for k in (128, 256, 512, 256)]
        self.conv1 = nn.Sequential(snn.MultiStep(nn.Conv2d(in_channels, c[0], 3, 1, 1, bias=norm == "none")),
                                   _norm(norm, c[0], 1.0))
        self.lif1 = _lif(backend)
        blocks, c_in = [], c[0]
        for i, (c_out, n) in enumerate(zip(c[:3], (3, 3, 2))):
            layer = []
            for j in range(n):
                layer.append(BasicBlock(c_in, c_out, 2 if (i > 0 and j == 0) else 1, norm, backend))
                c_in = c_out
            blocks.append(nn.Sequential(*layer))
        self.block1, self.block2, self.block3 = blocks
        self.pool = snn.MultiStep(nn.AdaptiveAvgPool2d(1))
        self.fc1 = snn.MultiStep(nn.Linear(c[2], c[3]))
        self.lif_fc = _lif(backend)
        self.fc2 = snn.MultiStep(nn.Linear(c[3], num_classes))
        self.stages = {
            "conv1": [self.lif1],
            "block1": [m for b in self.block1 for m in (b.lif1, b.lif2)],
            "block2": [m for b in self.block2 for m in (b.lif1, b.lif2)],
            "block3": [m for b in self.block3 for m in (b.lif1, b.lif2)],
            "fc": [self.lif_fc],
        }

    def forward(self, x):  # [T, B, C, H, W] -> logits [B, classes]
        x = self.lif1(self.conv1(x))
        x = self.block3(self.block2(self.block1(x)))
        x = self.pool(x).flatten(2)
        return self.fc2(self.lif_fc(self.fc1(x))).mean(0)
