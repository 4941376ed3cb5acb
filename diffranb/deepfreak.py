"""DeepFreak: a ResNet-50 for one-channel diffraction frames, trained and run on a CPU.

DeepFreak (Souza et al. 2019, section 4.3) is ResNet-50 (He et al. 2016: bottleneck blocks in four stages of
3, 4, 6 and 3) with one input channel and its stem, strides and final pooling adapted to 512 × 512 frames.
The paper searched 13 such *topologies* (its Table 8) together with the training hyperparameters by BOHB
(:mod:`diffranb.bohb`). Here the topologies are data (:data:`TOPOLOGIES`), the network is assembled from
torchvision's own :class:`~torchvision.models.resnet.Bottleneck` blocks (:class:`DeepFreakNet`), and the rest
is what a CPU needs:

- **Input.** The 8-bit frame (:func:`diffranb.dataset.to_8bit`), optionally binned ``b × b`` (the speed knob:
  4× binning makes every convolution 16× cheaper) by the mean or the maximum of each block
  (:func:`bin_images`; the maximum keeps one-pixel Bragg spots at full height), scaled to [0, 1], minus the
  training set's per-pixel mean image (computed once by :func:`mean_image`, stored with the model). Beyond
  the paper, ``TrainConfig(input="spots")`` shows the network a hit finder's map of the frame instead, the
  significance of a spot at every pixel with the detector masked (:func:`network_input`; the mask is learnt
  from the training split and saved with the model).
- **Training** (:func:`train`). SGD with momentum and weight decay, cross-entropy, the learning rate divided by
  10 every 10 epochs (:func:`learning_rate`; epoch 0 runs at the base rate). Frames stream from the HDF5 set
  in a seeded order. After every epoch BatchNorm's statistics are recomputed under the final weights, the
  validation frames are scored, and a checkpoint (safetensors + JSON) is written atomically, so a run
  killed at any point continues from its last finished epoch with the same weights an uninterrupted run
  would have; the model with the best validation accuracy is what is saved.
- **Speed** on two cores (``diffranb bench deepfreak``, chosen topology, random inputs): about 20 training
  frames/s binned 4× (128² input), 1 frame/s at full resolution (7.6 GB resident at batch 16: memory grows
  with the batch, and the paper's winners used batches of 1 and 2); inference on 512² frames 4–5 frames/s.
- **Frames kept in memory** (:class:`BinnedFrames`). Reading a frame from the compressed set and mapping it to
  8 bits costs more than a training step of a small topology on a binned frame, so :func:`train` keeps the
  binned training and validation frames after the first epoch, with the same weights. For DiffraNet's 12,400
  training and validation frames that is 194 MiB at 4× binning by the maximum (uint8) and 388 MiB by the mean
  (uint16 sums); ``diffranb bench deepfreak --data`` times training from the file and from memory in one run
  (``results/deepfreak-hand/bench.json``: 63 → 171 frames/s at 4× binning).
- **Saved models** are a directory: ``model.json`` (``kind``, ``classes``, ``dataset_hash``, topology,
  preprocessing, training history) and ``model.safetensors`` (weights, mean image and, for the spot input,
  the detector mask). Loading unpickles nothing (:func:`load_model`).

References
----------
A. Souza, L. B. Oliveira, S. Hollatz, M. Feldman, K. Olukotun, J. M. Holton, A. E. Cohen, L. Nardi,
"DiffraNet: automatic classification of serial crystallography diffraction patterns" (2019),
https://arxiv.org/abs/1904.11834 (DeepFreak: section 4.3, Tables 6, 8 and 9, Figures 3 and 4).
K. He, X. Zhang, S. Ren, J. Sun, "Deep residual learning for image recognition", CVPR 2016,
https://doi.org/10.1109/CVPR.2016.90
R. R. Selvaraju et al., "Grad-CAM: visual explanations from deep networks via gradient-based localization",
ICCV 2017, https://doi.org/10.1109/ICCV.2017.74
K. Simonyan, A. Vedaldi, A. Zisserman, "Deep inside convolutional networks: visualising image classification
models and saliency maps" (2013), https://arxiv.org/abs/1312.6034
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# torch is imported inside the functions that need it: `import diffranb.deepfreak` stays cheap, and the
# classic pipelines (which share diffranb.evaluate) never pay for it.

# OpenMP threads that wait for work spin by default. On two cores shared with any other busy process, torch then
# runs 10× slower on two threads than on one (measured: 2.1 against 19.6 training frames/s, chosen topology at
# 128²); waiting passively costs little on an idle machine. Takes effect if torch is not imported yet.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

MODEL_FORMAT = "diffranb-deepfreak/1"
CHECKPOINT_FORMAT = "diffranb-deepfreak-checkpoint/1"
#: The four ResNet-50 stages: bottleneck blocks per stage.
STAGE_BLOCKS = (3, 4, 6, 3)
#: How :func:`bin_images` reduces a block of pixels to one: its mean or its maximum.
BIN_MODES = ("mean", "max")
#: What the network is shown (:func:`network_input`): the 8-bit frame, or the significance map of its spots.
INPUTS = ("frame", "spots")
#: Median window (px) of the ``"spots"`` input's background (:func:`diffranb.features.spot_significance`).
SPOT_INPUT_WINDOW = 5
#: Weights of the ``"spots"`` input's 3 × 3 sums (:data:`diffranb.features.SPOT_KERNELS`): the plain box sum the
#: networks were trained on, the spot statistics' map of extractor version 2, which this version tag names.
SPOT_INPUT_KERNEL = "box"
SPOT_INPUT_VERSION = 2
#: The ``"spots"`` input is kept as int8 codes, round(SPOT_CODE_STEPS · asinh(z / SPOT_CODE_KNEE)): steps of
#: 0.125 in z about 0, of 6 % for bright spots, saturating at |z| ≈ 2,800, which no frame reaches: a box sum of
#: 8-bit pixels is at most 9 · 255 and its noise at least features.min_sum_noise("box"), so |z| ≤ 2,650.
SPOT_CODE_KNEE = 2.0
SPOT_CODE_STEPS = 16


# ---------------------------------------------------------------------------------------------------------
# Topologies
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Topology:
    """One DeepFreak topology: ResNet-50's blocks with its stem, strides and last pooling changed.

    Stage ``k`` (0–3) has bottleneck width ``filters · 2**k`` and ``4 · filters · 2**k`` output channels.

    Attributes
    ----------
    filters : int
        Base number of filters: the stem's output channels and the first stage's bottleneck width (64 in
        ResNet-50).
    conv_size, conv_stride : int, px
        Kernel and stride of the stem's convolution (padding ``conv_size // 2``).
    pool1_size, pool1_stride : int, px
        Kernel and stride of the stem's max pooling (padding ``pool1_size // 2``).
    pool2_size, pool2_stride : int, px
        Kernel and stride of the average pooling after the last stage, whose output is flattened into the
        classifier: unlike ResNet's global pooling, it keeps a coarse map of *where* the signal is. On inputs
        so small that the last feature map is narrower than the kernel, the kernel shrinks to the map.
    block_strides : tuple of 4 int
        Stride of the first block of each stage.
    """

    filters: int  # channels
    conv_size: int = 7  # px
    conv_stride: int = 2  # px
    pool1_size: int = 3  # px
    pool1_stride: int = 2  # px
    pool2_size: int = 7  # px (feature-map cells)
    pool2_stride: int = 1  # px (feature-map cells)
    block_strides: tuple = (1, 2, 2, 2)  # px, per stage

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            values = value if f.name == "block_strides" else (value,)
            if f.name == "block_strides" and (not isinstance(value, tuple) or len(value) != 4):
                raise ValueError(f"Topology.block_strides = {value!r}: must be a tuple of 4 whole numbers ≥ 1")
            if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in values):
                raise ValueError(f"Topology.{f.name} = {value!r}: must be whole number(s) ≥ 1")

    def describe(self) -> str:
        """One line, e.g. ``64 filters, conv 7/2, pool 3/2, pool 7/1, strides 1-2-3-3``."""
        return (f"{self.filters} filters, conv {self.conv_size}/{self.conv_stride}, "
                f"pool {self.pool1_size}/{self.pool1_stride}, pool {self.pool2_size}/{self.pool2_stride}, "
                f"strides {'-'.join(map(str, self.block_strides))}")


def _t(filters, conv_stride, pool2_size, pool2_stride, strides):
    return Topology(filters=filters, conv_stride=conv_stride, pool2_size=pool2_size, pool2_stride=pool2_stride,
                    block_strides=strides)


#: The 13 topologies of DeepFreak's search (Souza et al. 2019, Table 8), numbered 1–13 in the paper and 0–12
#: here. Base filters, first-convolution stride, last pool and block strides are the values of the authors'
#: published BOHB worker; the first convolution (7 × 7) and first pool (3 × 3, stride 2) are ResNet-50's and the
#: same in every topology, as in that worker. The paper's own table could not be consulted while this was
#: written, so these two columns, taken as constant, are the reconstructed part.
TOPOLOGIES = (
    _t(64, 2, 9, 2, (1, 2, 2, 2)),
    _t(64, 2, 13, 2, (1, 2, 2, 2)),
    _t(64, 2, 7, 1, (2, 2, 2, 2)),
    _t(64, 4, 7, 1, (1, 2, 2, 2)),
    _t(64, 2, 7, 2, (2, 2, 2, 2)),
    _t(64, 2, 15, 2, (1, 2, 2, 2)),
    _t(64, 2, 8, 1, (2, 2, 2, 2)),
    _t(64, 2, 7, 1, (1, 2, 3, 3)),
    _t(8, 2, 7, 1, (1, 2, 2, 2)),
    _t(8, 2, 7, 2, (1, 2, 2, 2)),
    _t(64, 2, 9, 2, (1, 2, 2, 3)),
    _t(16, 2, 9, 2, (1, 2, 2, 2)),
    _t(16, 2, 7, 2, (1, 2, 2, 2)),
)
#: Index into :data:`TOPOLOGIES` of the paper's winner (its topology 8): 64 filters, 7/2 convolution, 3/2 pool,
#: 7/1 pool, strides 1, 2, 3, 3.
CHOSEN_TOPOLOGY = 7


def topology(index: int) -> Topology:
    """``TOPOLOGIES[index]``, with a ``ValueError`` naming the allowed range."""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(TOPOLOGIES):
        raise ValueError(f"topology = {index!r}: must be an index 0–{len(TOPOLOGIES) - 1} into TOPOLOGIES")
    return TOPOLOGIES[int(index)]


def _out(n: int, kernel: int, stride: int, pad: int) -> int:
    return (n + 2 * pad - kernel) // stride + 1


def feature_shapes(top: Topology, input_shape) -> dict:
    """Spatial size (rows, columns) after the stem, after each stage and after the last pooling.

    Parameters
    ----------
    top : Topology
    input_shape : (int, int), px
        The network's input (after binning).

    Returns
    -------
    dict
        ``{"stem": (h, w), "stage1": ..., "stage4": ..., "pool2": ..., "pool2_kernel": (kh, kw)}``.
    """
    h, w = (int(s) for s in input_shape)
    shapes = {}
    h, w = (_out(_out(n, top.conv_size, top.conv_stride, top.conv_size // 2), top.pool1_size, top.pool1_stride,
                  top.pool1_size // 2) for n in (h, w))
    shapes["stem"] = (h, w)
    for k, s in enumerate(top.block_strides):
        h, w = _out(h, 3, s, 1), _out(w, 3, s, 1)  # the stride sits on each stage's first 3 × 3 convolution
        shapes[f"stage{k + 1}"] = (h, w)
    if min(h, w) < 1:
        raise ValueError(f"input_shape = {tuple(input_shape)}: too small for topology {top.describe()}")
    kernel = (min(top.pool2_size, h), min(top.pool2_size, w))
    shapes["pool2_kernel"] = kernel
    shapes["pool2"] = (_out(h, kernel[0], top.pool2_stride, 0), _out(w, kernel[1], top.pool2_stride, 0))
    return shapes


# ---------------------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------------------

def _network_class():
    import torch
    from torch import nn
    from torchvision.models.resnet import Bottleneck, conv1x1

    class DeepFreakNet(nn.Module):
        """ResNet-50 for one-channel frames of a fixed size, in one of the DeepFreak topologies.

        Parameters
        ----------
        top : Topology
        n_classes : int
        input_shape : (int, int), px
            The input's size: the classifier's width depends on it (see :func:`feature_shapes`).
        """

        def __init__(self, top: Topology, n_classes: int, input_shape):
            super().__init__()
            self.topology, self.input_shape = top, tuple(int(s) for s in input_shape)
            shapes = feature_shapes(top, self.input_shape)
            f = top.filters
            self.stem = nn.Sequential(
                nn.Conv2d(1, f, top.conv_size, top.conv_stride, top.conv_size // 2, bias=False),
                nn.BatchNorm2d(f), nn.ReLU(inplace=True),
                nn.MaxPool2d(top.pool1_size, top.pool1_stride, top.pool1_size // 2))
            stages, channels = [], f
            for k, (n_blocks, stride) in enumerate(zip(STAGE_BLOCKS, top.block_strides)):
                width = f * 2**k
                out = width * Bottleneck.expansion
                shortcut = None
                if stride != 1 or channels != out:
                    shortcut = nn.Sequential(conv1x1(channels, out, stride), nn.BatchNorm2d(out))
                # width_per_group=64 makes the bottleneck's inner width equal to `width`, as in ResNet-50
                blocks = [Bottleneck(channels, width, stride, shortcut)]
                blocks += [Bottleneck(out, width) for _ in range(n_blocks - 1)]
                stages.append(nn.Sequential(*blocks))
                channels = out
            self.stage1, self.stage2, self.stage3, self.stage4 = stages
            self.pool2 = nn.AvgPool2d(shapes["pool2_kernel"], top.pool2_stride)
            self.fc = nn.Linear(channels * math.prod(shapes["pool2"]), n_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

        def features(self, x):
            """The last stage's feature map, (n, C, h, w)."""
            x = self.stem(x)
            return self.stage4(self.stage3(self.stage2(self.stage1(x))))

        def forward(self, x):
            """Class scores (logits), (n, n_classes), for inputs (n, 1, H, W)."""
            return self.fc(torch.flatten(self.pool2(self.features(x)), 1))

    return DeepFreakNet


def build_network(top: Topology | int, n_classes: int, input_shape, *, seed: int | None = 0):
    """A freshly initialised :class:`DeepFreakNet` (a ``torch.nn.Module``).

    Parameters
    ----------
    top : Topology or int
        A topology or an index into :data:`TOPOLOGIES`.
    n_classes : int
    input_shape : (int, int), px
    seed : int or None
        Seed of the initial weights (None: torch's global generator as it stands).
    """
    import torch

    top = topology(top) if not isinstance(top, Topology) else top
    cls = _network_class()
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        net = cls(top, n_classes, input_shape)
    # oneDNN's convolutions run 1.5–2× faster on a CPU with channels-last tensors
    return net.to(memory_format=torch.channels_last)


def _as_input(x: np.ndarray):
    """(n, H, W) float32 → (n, 1, H, W) channels-last tensor."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).unsqueeze(1).contiguous(
        memory_format=torch.channels_last)


def complexity(top: Topology | int, input_shape=(512, 512), n_classes: int = 5) -> dict:
    """Parameters and multiply-accumulates of one forward pass of one frame, counted without computing it.

    Returns
    -------
    dict
        ``params`` (weights and biases, not BatchNorm running statistics), ``macs`` (multiply-accumulates
        of one frame, from torch's FLOP counter / 2), ``final_map`` (the last stage's size) and
        ``fc_inputs`` (the classifier's width).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    top = topology(top) if not isinstance(top, Topology) else top
    with torch.device("meta"):
        net = _network_class()(top, n_classes, input_shape)
        x = torch.empty(1, 1, *input_shape)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net.eval()(x)
    shapes = feature_shapes(top, input_shape)
    return {"params": sum(p.numel() for p in net.parameters()), "macs": counter.get_total_flops() // 2,
            "final_map": shapes["stage4"], "fc_inputs": net.fc.in_features}


def topology_table(input_shape=(512, 512), n_classes: int = 5) -> list:
    """One row per topology: its parameters, weights and multiply-accumulates per frame at ``input_shape``.

    Returns
    -------
    list of dict
        ``number`` (1–13, the paper's), ``filters``, ``conv``, ``pool1``, ``pool2`` (``"size/stride"``),
        ``strides``, ``params``, ``gmacs`` (10⁹ multiply-accumulates per frame), ``final_map``, ``chosen``.
    """
    rows = []
    for k, t in enumerate(TOPOLOGIES):
        c = complexity(t, input_shape, n_classes)
        rows.append({"number": k + 1, "filters": t.filters, "conv": f"{t.conv_size}/{t.conv_stride}",
                     "pool1": f"{t.pool1_size}/{t.pool1_stride}", "pool2": f"{t.pool2_size}/{t.pool2_stride}",
                     "strides": "-".join(map(str, t.block_strides)), "params": c["params"],
                     "gmacs": c["macs"] / 1e9, "final_map": c["final_map"], "chosen": k == CHOSEN_TOPOLOGY})
    return rows


# ---------------------------------------------------------------------------------------------------------
# Input: binning and the mean image
# ---------------------------------------------------------------------------------------------------------

def check_input(kind, name: str = "input") -> str:
    """``kind`` if it is one of :data:`INPUTS`, else a ``ValueError`` naming ``name``, the value and the choices."""
    if not isinstance(kind, str) or kind not in INPUTS:
        raise ValueError(f"{name} = {kind!r}: must be one of {', '.join(map(repr, INPUTS))}")
    return kind


def check_bin_mode(mode, name: str = "mode") -> str:
    """``mode`` if it is one of :data:`BIN_MODES`, else a ``ValueError`` naming ``name``, the value and the choices."""
    if not isinstance(mode, str) or mode not in BIN_MODES:
        raise ValueError(f"{name} = {mode!r}: must be one of {', '.join(map(repr, BIN_MODES))}")
    return mode


def bin_images(images8, binning: int = 1, mode: str = "mean") -> np.ndarray:
    """8-bit frames scaled to [0, 1] and reduced over ``binning × binning`` pixel blocks to their mean or maximum.

    Rows and columns beyond a whole number of blocks are dropped.

    The mean keeps a block's total signal (its photons, up to the 8-bit scaling) but divides a spot one pixel
    wide by ``binning²``: at 4× binning a Bragg spot that fills one pixel rises above the background by a
    sixteenth of its height and all but vanishes in the noise. The maximum keeps the spot's peak at full height,
    wherever in the block it falls; the price is a higher, noisier floor: every block now reports the
    brightest of its ``binning²`` background pixels, which lies above their mean, and the background's noise
    is not averaged down as the mean averages it (by ``binning`` for independent pixels). The training set's
    mean image (:func:`mean_image`, binned the same way) is still subtracted, which removes that raised floor
    on average but not its fluctuations.

    Parameters
    ----------
    images8 : (n, M, N) or (M, N) uint8
    binning : int
        Block edge, px (1: no binning, and ``mode`` makes no difference).
    mode : {"mean", "max"}
        How a block becomes one value (:data:`BIN_MODES`).

    Returns
    -------
    (n, M // binning, N // binning) float32, in [0, 1]

    Examples
    --------
    >>> bin_images(np.array([[[0, 255], [255, 255]]], dtype=np.uint8), 2).tolist()
    [[[0.75]]]

    One bright pixel in a dark 2 × 2 block: a quarter of its height under the mean, all of it under the maximum.

    >>> spot = np.array([[[0, 0], [0, 255]]], dtype=np.uint8)
    >>> bin_images(spot, 2, "mean").tolist(), bin_images(spot, 2, "max").tolist()
    ([[[0.25]]], [[[1.0]]])
    """
    return binned_to_input(_bin_codes(_checked_frames(images8, binning, mode), binning, mode), binning, mode)


def _checked_frames(images8, binning, mode) -> np.ndarray:
    """``images8`` as an (n, M, N) uint8 array, once it and the binning are known to be valid (else ValueError)."""
    images8 = np.asarray(images8)
    if images8.dtype != np.uint8:
        raise ValueError(f"images8.dtype = {images8.dtype}: must be uint8 (dataset.to_8bit)")
    if isinstance(binning, bool) or not isinstance(binning, (int, np.integer)) or binning < 1:
        raise ValueError(f"binning = {binning!r}: must be a whole number ≥ 1")
    check_bin_mode(mode)
    return images8[None] if images8.ndim == 2 else images8


def _code_dtype(binning: int, mode: str, input_kind: str = "frame"):
    """dtype of :func:`_input_codes`: int8 for the spot input; for frames uint8 unbinned and for maxima,
    uint16 for sums up to 16 × 16 blocks (255·256 < 2¹⁶), uint32 beyond."""
    if input_kind == "spots":
        return np.dtype(np.int8)
    if binning == 1 or mode == "max":
        return np.dtype(np.uint8)
    return np.dtype(np.uint16 if binning <= 16 else np.uint32)


def _bin_codes(images8, binning: int, mode: str) -> np.ndarray:
    """The exact integers behind :func:`bin_images` (checked uint8 input): each block's maximum (uint8), or
    its sum (uint16, at most 255·binning², so binning ≤ 16); the frames themselves without binning."""
    if binning == 1:
        return images8
    blocks = _blocks(images8, binning)
    if mode == "max":
        return blocks.max(axis=(2, 4))
    return blocks.sum(axis=(2, 4), dtype=_code_dtype(binning, mode))


def _blocks(x, binning: int) -> np.ndarray:
    """(n, M, N) array → (n, M // b, b, N // b, b) view of its whole ``b × b`` blocks (rows and columns beyond
    them dropped); ValueError when no block fits."""
    n, m, k = x.shape
    hm, hk = m // binning, k // binning
    if hm < 1 or hk < 1:
        raise ValueError(f"binning = {binning}: larger than the {m} × {k} frames")
    return x[:, :hm * binning, :hk * binning].reshape(n, hm, binning, hk, binning)


def binned_to_input(codes, binning: int, mode: str) -> np.ndarray:
    """:func:`bin_images`'s float32 result from its integers (:class:`BinnedFrames` stores those)."""
    if binning == 1 or mode == "max":
        return codes.astype(np.float32) / np.float32(255)
    return codes.astype(np.float32) / np.float32(255 * binning * binning)


def spot_codes(images8, binning: int = 1, mode: str = "max", mask=None) -> np.ndarray:
    """The ``"spots"`` input's integers: each frame's spot significance, binned, on a compressed int8 scale.

    z is :func:`diffranb.features.spot_significance` with a :data:`SPOT_INPUT_WINDOW` median background and
    the detector ``mask``: the 3 × 3 box sum (:data:`SPOT_INPUT_KERNEL`) above the local background in units of
    its noise at that radius, 0 on masked pixels. It is what a hit finder thresholds; the spot forest of
    chapter 4 counts the peaks of the same map made with the matched kernel, and the network is given the whole
    map instead of counts. Binning takes each block's maximum or mean
    of z. The code is round(:data:`SPOT_CODE_STEPS` · asinh(z / :data:`SPOT_CODE_KNEE`)), clipped to ±127:
    linear (steps of 0.125) in the noise, logarithmic for bright spots.

    Parameters
    ----------
    images8 : (n, M, N) uint8
    binning : int
    mode : {"mean", "max"}
    mask : (M, N) bool, optional
        Pixels to ignore (:func:`diffranb.features.detector_mask`).

    Returns
    -------
    (n, M // binning, N // binning) int8
    """
    from .features import spot_significance

    n, m, k = images8.shape
    out = np.empty((n,) + _blocks(images8[:1], binning).shape[1:4:2], dtype=np.int8)
    for j, image in enumerate(images8):
        z = spot_significance(image, SPOT_INPUT_WINDOW, mask, SPOT_INPUT_KERNEL)[0]
        if binning > 1:
            blocks = _blocks(z[None], binning)[0]
            z = blocks.max(axis=(1, 3)) if mode == "max" else blocks.mean(axis=(1, 3))
        out[j] = np.clip(np.rint(SPOT_CODE_STEPS * np.arcsinh(z / np.float32(SPOT_CODE_KNEE))), -127, 127)
    return out


def _input_codes(images8, binning: int, mode: str, input_kind: str = "frame", mask=None) -> np.ndarray:
    """The integers behind :func:`network_input` (checked uint8 (n, M, N) frames), as :class:`BinnedFrames`
    stores them."""
    if input_kind == "spots":
        return spot_codes(images8, binning, mode, mask)
    return _bin_codes(images8, binning, mode)


def codes_to_input(codes, binning: int, mode: str, input_kind: str = "frame") -> np.ndarray:
    """:func:`network_input`'s float32 result from its integers: for spots asinh(z / knee) / 4, about 0.3 at
    z = 3 and 1 at z = 50."""
    if input_kind == "spots":
        return codes.astype(np.float32) / np.float32(4 * SPOT_CODE_STEPS)
    return binned_to_input(codes, binning, mode)


def network_input(images8, binning: int = 1, mode: str = "mean", input_kind: str = "frame",
                  mask=None) -> np.ndarray:
    """What the network is shown of 8-bit frames, before the mean image is subtracted (float32).

    ``"frame"``: :func:`bin_images`, the frame scaled to [0, 1] and binned. ``"spots"``: :func:`spot_codes`
    as floats, asinh(z / :data:`SPOT_CODE_KNEE`) / 4 of the binned spot significance (not in the paper).

    Returns
    -------
    (n, M // binning, N // binning) float32
    """
    check_input(input_kind, "input_kind")
    if input_kind == "frame":
        return bin_images(images8, binning, mode)
    images8 = _checked_frames(images8, binning, mode)
    return codes_to_input(spot_codes(images8, binning, mode, mask), binning, mode, input_kind)


#: Default memory for :class:`BinnedFrames` in :func:`train`, MiB. DiffraNet's 12,400 training and validation
#: frames take 194 MiB (max, uint8) or 388 MiB (mean, uint16) at 4× binning, 775 MiB or 1.5 GiB at 2×; full
#: frames (3.0 GiB) do not fit and are read from the file every epoch.
FRAME_STORE_MIB = 2048


class BinnedFrames:
    """A data set's frames, binned for the network, read from the file once and then served from memory.

    Reading a frame from the compressed HDF5 set and mapping it to 8 bits takes about 10 ms, more than a
    training step of a small network on a binned frame. The first time a frame is asked for it is read and
    binned as before; its integers (:func:`bin_images` before the scaling: uint8 maxima or uint16 sums) are
    kept, so later epochs cost only the conversion to float32. The floats served are bit for bit those of
    ``bin_images`` on ``ds.batches``: a run gives the same weights with the store or without it.

    Parameters
    ----------
    ds : diffranb.dataset.Dataset
    binning : int
    mode : {"mean", "max"}
    indices : (n,) int
        Every frame that may be asked for (sizes the store).
    max_mib : float
        Memory the store may take; when the frames need more, nothing is stored and every batch is read.
    input_kind : {"frame", "spots"}
        What is served (:func:`network_input`): the spot input is stored as int8 codes, computed once.
    mask : (M, N) bool, optional
        The detector mask of the spot input.
    """

    def __init__(self, ds, binning: int, mode: str, indices, *, max_mib: float = FRAME_STORE_MIB,
                 input_kind: str = "frame", mask=None):
        check_bin_mode(mode)
        self.ds, self.binning, self.mode = ds, int(binning), mode
        self.input, self.mask = check_input(input_kind, "input_kind"), mask
        indices = np.unique(np.asarray(indices, dtype=np.int64))
        m, k = ds.images.shape[1:]
        shape = (m // self.binning, k // self.binning)
        dtype = _code_dtype(self.binning, mode, self.input)
        need = len(indices) * shape[0] * shape[1] * dtype.itemsize
        self.enabled = need <= max_mib * 2**20 and len(indices) > 0
        self.nbytes = need if self.enabled else 0
        self.reads = 0  # frames read from the file
        self._slot = np.full(len(ds), -1, dtype=np.int64)
        self._codes = np.empty((len(indices),) + shape, dtype=dtype) if self.enabled else None
        self._allowed = np.zeros(len(ds), dtype=bool)
        self._allowed[indices] = True
        self._filled = 0

    def batches(self, indices, batch_size: int):
        """Like ``ds.batches``, in the order given, but yielding the binned float32 input.

        Yields
        ------
        x : (b, M // binning, N // binning) float32
        labels : (b,) uint8
        indices : (b,) int64
        """
        indices = np.asarray(indices, dtype=np.int64)
        if not self.enabled:
            for images, labels, chunk in self.ds.batches(indices, batch_size):
                self.reads += len(chunk)
                yield network_input(images, self.binning, self.mode, self.input, self.mask), labels, chunk
            return
        if not np.all(self._allowed[indices]):
            raise ValueError("BinnedFrames.batches: frames outside the indices the store was made for")
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            missing = np.unique(chunk[self._slot[chunk] < 0])
            if len(missing):
                for images, _, got in self.ds.batches(missing, len(missing)):
                    slots = np.arange(self._filled, self._filled + len(got))
                    self._codes[slots] = _input_codes(images, self.binning, self.mode, self.input, self.mask)
                    self._slot[got] = slots
                    self._filled += len(got)
                    self.reads += len(got)
            yield codes_to_input(self._codes[self._slot[chunk]], self.binning, self.mode, self.input), \
                self.ds.labels[chunk], chunk


def mean_image(ds, indices, binning: int = 1, mode: str = "mean", *, batch_size: int = 64,
               progress: bool = False, frames: BinnedFrames | None = None, input_kind: str = "frame",
               mask=None) -> np.ndarray:
    """Per-pixel mean of the network input (:func:`network_input`) of the frames ``indices`` of a data set.

    Parameters
    ----------
    ds : diffranb.dataset.Dataset
    indices : (n,) int
        Usually the training split.
    binning : int
    mode : {"mean", "max"}
        Binning mode (:func:`bin_images`); the network's input must be binned the same way.
    frames : BinnedFrames, optional
        Read the frames through this store (of the same binning, mode and input), which keeps them.
    input_kind : {"frame", "spots"}
    mask : (M, N) bool, optional
        The detector mask of the spot input.

    Returns
    -------
    (M // binning, N // binning) float32
    """
    from tqdm.auto import tqdm

    indices = np.asarray(indices)
    if len(indices) == 0:
        raise ValueError("indices is empty: the mean image needs at least one frame")
    if frames is not None and ((frames.binning, frames.mode, frames.input) != (binning, mode, input_kind)
                               or not _same_mask(frames.mask, mask)):
        raise ValueError(f"frames serve {frames.input} binned {frames.binning} × {frames.binning} by "
                         f"{frames.mode} (mask {mask_digest(frames.mask)}), not {input_kind} binned {binning} × "
                         f"{binning} by {mode} (mask {mask_digest(mask)})")
    frames = frames or BinnedFrames(ds, binning, mode, indices, max_mib=0, input_kind=input_kind, mask=mask)
    total = None
    with tqdm(total=len(indices), unit="img", desc="mean image", disable=not progress) as bar:
        for x, _, _ in frames.batches(np.sort(indices), batch_size):
            s = x.sum(axis=0, dtype=np.float64)
            total = s if total is None else total + s
            bar.update(len(x))
    return (total / len(indices)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# A trained model
# ---------------------------------------------------------------------------------------------------------

class DeepFreakModel:
    """A DeepFreak network with its preprocessing and classes: what :func:`load_model` returns.

    Attributes
    ----------
    network : DeepFreakNet (torch.nn.Module), in eval mode
    classes : tuple of str
        The class of each network output, in order.
    codes : (n_classes,) int
        Their label codes (indices into :data:`diffranb.dataset.ALL_CLASSES`), what :meth:`predict` returns.
    binning : int
    bin_mode : {"mean", "max"}
        How :func:`bin_images` reduces each block (models saved before the option existed: ``"mean"``).
    mean : (H, W) float32
        Mean image subtracted from every input.
    input : {"frame", "spots"}
        What the network is shown (:func:`network_input`; models saved before the option existed: ``"frame"``).
    mask : (M, N) bool or None
        The detector mask of the spot input, learnt from the training frames and saved with the model.
    info : dict
        Everything else ``model.json`` holds (topology, training configuration and history, data set hash).
    """

    kind = "deepfreak"

    def __init__(self, network, classes, binning: int, mean: np.ndarray, info: dict | None = None, *,
                 bin_mode: str = "mean", input_kind: str = "frame", mask=None):
        from .dataset import ALL_CLASSES

        self.network = network.eval()
        self.classes = tuple(classes)
        self.codes = np.array([ALL_CLASSES.index(c) for c in self.classes], dtype=np.int64)
        self.binning = int(binning)
        self.bin_mode = check_bin_mode(bin_mode, "bin_mode")
        self.mean = np.asarray(mean, dtype=np.float32)
        self.input = check_input(input_kind, "input_kind")
        self.mask = None if mask is None else np.asarray(mask, dtype=bool)
        if (self.input == "spots") != (self.mask is not None):
            raise ValueError(f"a model of input {self.input!r} with{'out' if self.mask is None else ''} a detector "
                             "mask: the spot input needs one (all False: nothing masked), the frame input none")
        self.info = dict(info or {})

    @property
    def input_shape(self) -> tuple:
        return self.network.input_shape

    @property
    def dataset_hash(self) -> str | None:
        """Content hash of the data set the model was trained on (:attr:`diffranb.dataset.Dataset.content_sha256`)."""
        return self.info.get("dataset_hash")

    def preprocess(self, images8):
        """Network input for 8-bit frames (:func:`network_input`) minus the mean image; (n, 1, H, W) tensor."""
        x = network_input(images8, self.binning, self.bin_mode, self.input, self.mask)
        if x.shape[1:] != self.mean.shape:
            raise ValueError(f"frames of {np.asarray(images8).shape[-2:]} px binned {self.binning}× give "
                             f"{x.shape[1:]}, the model expects {self.mean.shape}")
        return _as_input(x - self.mean)

    def scores(self, images8, batch_size: int = 64) -> np.ndarray:
        """Class probabilities (softmax), (n, n_classes) float32."""
        import torch

        images8 = np.asarray(images8)
        if images8.ndim == 2:
            images8 = images8[None]
        out = []
        with torch.inference_mode():
            for start in range(0, len(images8), batch_size):
                logits = self.network(self.preprocess(images8[start:start + batch_size]))
                out.append(torch.softmax(logits, 1).numpy())
        return np.concatenate(out) if out else np.empty((0, len(self.classes)), np.float32)

    def predict(self, images8, batch_size: int = 64) -> np.ndarray:
        """Label codes (indices into :data:`diffranb.dataset.ALL_CLASSES`) of (n, M, N) uint8 frames, (n,) int64."""
        return self.codes[np.argmax(self.scores(images8, batch_size), axis=1)]

    def predict_dataset(self, ds, indices=None, batch_size: int = 64, *, progress: bool = False) -> np.ndarray:
        """:meth:`predict` for frames of a data set, streamed from disk; (n,) int64 label codes."""
        from tqdm.auto import tqdm

        indices = np.arange(len(ds)) if indices is None else np.asarray(indices)
        out = np.empty(len(indices), dtype=np.int64)
        done = 0
        with tqdm(total=len(indices), unit="img", desc="predicting", disable=not progress) as bar:
            for images, _, _ in ds.batches(indices, batch_size):
                out[done:done + len(images)] = self.predict(images, batch_size)
                done += len(images)
                bar.update(len(images))
        return out

    def save(self, path) -> Path:
        """Write ``model.json`` and ``model.safetensors`` into directory ``path`` (created if missing)."""
        return _save_model(path, self.network, self.classes, self.binning, self.bin_mode, self.mean, self.info,
                           input_kind=self.input, mask=self.mask)


def _model_json(network, classes, binning, bin_mode, mean, info, input_kind="frame", mask=None) -> dict:
    from . import __version__

    top = network.topology
    spots = {} if input_kind == "frame" else {**_spot_input_version(), "mask_digest": mask_digest(mask),
                                              "masked_pixels": int(np.count_nonzero(mask)),
                                              "mask_shape": list(np.shape(mask))}
    return {**info, "kind": "deepfreak", "format": MODEL_FORMAT, "classes": list(classes),
            "diffranb_version": __version__, "topology": dataclasses.asdict(top),
            "input_shape": list(network.input_shape), "n_classes": len(classes), "binning": int(binning),
            "bin_mode": bin_mode, "input": input_kind, **spots, "mean_shape": list(mean.shape),
            "dataset_hash": info.get("dataset_hash")}


def _spot_input_version() -> dict:
    """What makes a spot input (saved with models and checkpoints, checked when they are read): the version
    of :func:`diffranb.features.spot_significance`, its window and the int8 code."""
    return {"spot_version": SPOT_INPUT_VERSION, "spot_window": SPOT_INPUT_WINDOW,
            "spot_code": [SPOT_CODE_KNEE, SPOT_CODE_STEPS]}


def mask_digest(mask) -> str:
    """:func:`diffranb.features.mask_digest`: a fingerprint of a detector mask ("none" for None)."""
    from .features import mask_digest as digest

    return digest(mask)


def _mask_tensors(mask) -> dict:
    """The detector mask as a safetensors entry (uint8), or nothing."""
    import torch

    if mask is None:
        return {}
    return {"detector_mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.uint8))}


def _save_model(path, network, classes, binning, bin_mode, mean, info, *, input_kind="frame", mask=None) -> Path:
    """Write the two files of a saved model into ``path``, each through a temporary file and a rename
    (weights first: ``model.json`` is what makes the directory a model). Other files in ``path``, such as
    the training checkpoint, are left alone."""
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"net.{k}": v.detach().contiguous() for k, v in network.state_dict().items()}
    tensors["input_mean"] = torch.from_numpy(np.ascontiguousarray(mean, dtype=np.float32))
    tensors.update(_mask_tensors(mask))
    save_file(tensors, path / "model.safetensors.writing")
    meta = _model_json(network, classes, binning, bin_mode, mean, info, input_kind, mask)
    (path / "model.json.writing").write_text(json.dumps(meta, indent=1))
    os.replace(path / "model.safetensors.writing", path / "model.safetensors")
    os.replace(path / "model.json.writing", path / "model.json")
    return path


def load_model(path) -> DeepFreakModel:
    """Load a saved DeepFreak model directory (``model.json`` + ``model.safetensors``); nothing is unpickled.

    Parameters
    ----------
    path : str or os.PathLike
        The directory :meth:`DeepFreakModel.save` or :func:`train` wrote.
    """
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    meta = json.loads((path / "model.json").read_text())
    if meta.get("kind") != "deepfreak":
        raise ValueError(f"{str(path)!r}: model.json has kind {meta.get('kind')!r}, not 'deepfreak'")
    tensors = load_file(path / "model.safetensors")
    top = Topology(**{**meta["topology"], "block_strides": tuple(meta["topology"]["block_strides"])})
    net = _network_class()(top, meta["n_classes"], meta["input_shape"]).to(memory_format=torch.channels_last)
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    spot_keys = ("input", "spot_version", "spot_window", "spot_code", "mask_digest", "masked_pixels", "mask_shape")
    info = {k: v for k, v in meta.items() if k not in ("topology", "input_shape", "n_classes", "binning", "bin_mode",
                                                          "classes", "mean_shape", "format") + spot_keys}
    # a model.json without "input" predates the option, when every model saw the frame itself
    input_kind = meta.get("input", "frame")
    mask = None
    if input_kind == "spots":
        made = {k: meta.get(k) for k in _spot_input_version()}
        if made != _spot_input_version():
            raise ValueError(f"{str(path)!r}: a spot input made as {made}; this diffranb makes "
                             f"{_spot_input_version()}: retrain the model")
        if "detector_mask" not in tensors:
            raise ValueError(f"{str(path)!r}: a spot-input model without its detector mask "
                             "(model.safetensors has no 'detector_mask')")
        mask = tensors["detector_mask"].numpy().astype(bool)
        if mask_digest(mask) != meta.get("mask_digest"):
            raise ValueError(f"{str(path)!r}: the detector mask in model.safetensors ({int(mask.sum())} pixels, "
                             f"digest {mask_digest(mask)}) is not the one model.json describes "
                             f"({meta.get('masked_pixels')} pixels, digest {meta.get('mask_digest')})")
    elif "detector_mask" in tensors:
        raise ValueError(f"{str(path)!r}: a frame-input model with a detector mask: model.json and "
                         "model.safetensors disagree")
    # a model.json without "bin_mode" predates the option, when every model was mean-binned
    return DeepFreakModel(net, meta["classes"], meta["binning"], tensors["input_mean"].numpy(), info,
                          bin_mode=meta.get("bin_mode", "mean"), input_kind=input_kind, mask=mask)


# ---------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------

#: Batch sizes of the paper's search space (Table 9 lists 4–64; its best configurations used 1 and 2).
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class TrainConfig:
    """How a DeepFreak network is trained (the defaults: the chosen topology at 4× binning, 30 epochs).

    Attributes
    ----------
    topology : int
        Index into :data:`TOPOLOGIES`.
    learning_rate : float
        SGD's base learning rate (per unit of the mean cross-entropy over a batch).
    momentum : float
        SGD momentum, in [0, 1] (the paper searched [0.5, 1]).
    weight_decay : float
        L2 penalty on every weight (SGD's ``weight_decay``).
    batch_size : int, frames
    epochs : int
        Passes over the training frames (BOHB's budget).
    binning : int, px
        Input binning (1: the full frame; 4: 512² frames enter as 128²).
    bin_mode : {"mean", "max"}
        How each block is reduced (:func:`bin_images`): ``"max"`` keeps one-pixel spots at full height.
    lr_step : int, epochs
        The learning rate is divided by ``1 / lr_factor`` every ``lr_step`` epochs.
    lr_factor : float
    seed : int
        Seed of the initial weights, the order of the frames in each epoch and the subsets.
    max_train, max_val : int or None, frames
        Train (validate) on a seeded, class-stratified subset of this size of the split (None: all of it).
    flip : bool
        Augment the training frames: mirror a seeded half of every batch left–right (along the fast axis),
        after the mean image is subtracted. A mirrored frame is a frame of the same class: the count of
        reflections does not change, the polarisation and the beam centre's spread are symmetric about that
        axis, and the beamstop holder runs along it. Off in the paper's recipe.
    input : {"frame", "spots"}
        What the network is shown (:func:`network_input`): the frame, as in the paper, or its spot
        significance (a hit finder's map, with the detector mask learnt from the training split), binned the
        same way; ``bin_mode="max"`` then keeps each block's most significant pixel.
    """

    topology: int = CHOSEN_TOPOLOGY  # index into TOPOLOGIES
    learning_rate: float = 0.01  # per unit mean loss
    momentum: float = 0.9  # dimensionless
    weight_decay: float = 1e-5  # dimensionless
    batch_size: int = 16  # frames
    epochs: int = 30  # passes over the training frames
    binning: int = 4  # px
    bin_mode: str = "mean"  # "mean" or "max" of each binning × binning block
    lr_step: int = 10  # epochs
    lr_factor: float = 0.1  # dimensionless
    seed: int = 0
    max_train: int | None = None  # frames (None: the whole training split)
    max_val: int | None = None  # frames (None: the whole validation split)
    flip: bool = False  # mirror half of each training batch left–right
    input: str = "frame"  # "frame" or "spots" (network_input)

    def __post_init__(self):
        topology(self.topology)
        checks = {  # name: (test, allowed range)
            "learning_rate": (lambda v: v > 0, "> 0"),
            "momentum": (lambda v: 0 <= v <= 1, "in [0, 1]"),
            "weight_decay": (lambda v: 0 <= v < 1, "in [0, 1)"),
            "lr_factor": (lambda v: 0 < v <= 1, "in (0, 1]"),
        }
        for name, (ok, allowed) in checks.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not ok(value):
                raise ValueError(f"TrainConfig.{name} = {value!r}: must be a number {allowed}")
        for name in ("batch_size", "epochs", "binning", "lr_step", "max_train", "max_val"):
            value = getattr(self, name)
            if value is None and name.startswith("max_"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"TrainConfig.{name} = {value!r}: must be a whole number ≥ 1")
        check_bin_mode(self.bin_mode, "TrainConfig.bin_mode")
        if not isinstance(self.flip, bool):
            raise ValueError(f"TrainConfig.flip = {self.flip!r}: must be True or False")
        check_input(self.input, "TrainConfig.input")

    def same_run(self, other: TrainConfig) -> bool:
        """Whether ``other`` trains the same way, only for more or fewer epochs (so a checkpoint can serve)."""
        return dataclasses.replace(self, epochs=1) == dataclasses.replace(other, epochs=1)


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """Learning rate of epoch ``epoch`` (0-based): the base rate, divided by 10 every ``lr_step`` epochs.

    The original DeepFreak code divided the rate at epoch 0 too (its schedule ran one step ahead of the
    paper's description); here epoch 0 trains at the base rate.

    >>> [learning_rate(TrainConfig(learning_rate=1.0), e) for e in (0, 9, 10, 19, 20)]
    [1.0, 1.0, 0.1, 0.1, 0.010000000000000002]
    """
    return config.learning_rate * config.lr_factor ** (epoch // config.lr_step)


def subset(ds, split: str, size: int | None, seed: int) -> np.ndarray:
    """Sorted indices of ``split``, or of a seeded class-stratified subset of ``size`` of them.

    Each class keeps its share (largest remainders), so a small subset still holds every class.
    """
    indices = ds.indices(split=split)
    if size is None or size >= len(indices):
        return indices
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5B5E7]))
    labels = ds.labels[indices]
    kinds, counts = np.unique(labels, return_counts=True)
    quota = counts * size / len(indices)
    take = np.floor(quota).astype(int)
    take[np.argsort(take - quota)[:size - take.sum()]] += 1
    chosen = [rng.choice(indices[labels == k], n, replace=False) for k, n in zip(kinds, take)]
    return np.sort(np.concatenate(chosen))


def _epoch_order(indices, seed: int, epoch: int) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xE90C, epoch]))
    return rng.permutation(indices)


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class Infeasible(ValueError):
    """A configuration that cannot train at this input size: a batch of one frame whose last feature map is
    1 × 1 gives BatchNorm a single value per channel."""


class Diverged(FloatingPointError):
    """Training produced a non-finite loss (too high a learning rate): raised at the batch it happened."""


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    path : pathlib.Path
        The saved model (best validation accuracy), a directory for :func:`load_model`.
    history : list of dict
        One entry per epoch: ``epoch`` (1-based), ``lr``, ``train_loss``, ``train_accuracy``, ``val_loss``,
        ``val_accuracy``, ``seconds``, ``train_images_per_s``, ``max_rss_mib``.
    best_epoch : int
        1-based.
    best_val_accuracy : float
    resumed_from : int
        Epochs that were already done when this call started (0 for a fresh run).
    seconds : float
        Wall time of this call.
    """

    path: Path
    history: list
    best_epoch: int
    best_val_accuracy: float
    resumed_from: int
    seconds: float


def _checkpoint_paths(out: Path):
    return out / "checkpoint" / "state.json", out / "checkpoint" / "weights.safetensors"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_checkpoint(out: Path, net, optimizer, mean: np.ndarray, state: dict, mask=None) -> None:
    import torch
    from safetensors.torch import save_file

    state_path, weights_path = _checkpoint_paths(out)
    state_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"net.{k}": v.detach().contiguous() for k, v in net.state_dict().items()}
    tensors["input_mean"] = torch.from_numpy(np.ascontiguousarray(mean, dtype=np.float32))
    tensors.update(_mask_tensors(mask))
    names = {id(p): n for n, p in net.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[f"momentum.{names[id(p)]}"] = buf.detach().contiguous()
    tmp = weights_path.with_name(f"weights.{state['epochs_done']}.safetensors")
    save_file(tensors, tmp)
    state = {**state, "weights": tmp.name, "weights_sha256": _sha256_file(tmp)}
    tmp_state = state_path.with_name("state.json.writing")
    tmp_state.write_text(json.dumps(state, indent=1))
    os.replace(tmp_state, state_path)  # the commit point: state.json names the weights it goes with
    for old in state_path.parent.glob("weights.*.safetensors"):
        if old.name != tmp.name:
            old.unlink()


def _read_checkpoint(out: Path):
    from safetensors.torch import load_file

    state_path, _ = _checkpoint_paths(out)
    if not state_path.exists():
        return None, None
    state = json.loads(state_path.read_text())
    weights = state_path.parent / state["weights"]
    if state.get("format") != CHECKPOINT_FORMAT or not weights.exists() \
            or _sha256_file(weights) != state["weights_sha256"]:
        raise ValueError(f"{str(state_path)!r}: damaged or foreign checkpoint; remove {out / 'checkpoint'} "
                         "or train with resume=False")
    return state, load_file(weights)


def _same_mask(a, b) -> bool:
    """Whether two optional detector masks are the same (both None, or equal arrays)."""
    if a is None or b is None:
        return a is None and b is None
    return np.shape(a) == np.shape(b) and bool(np.array_equal(a, b))


def _flip_half(x: np.ndarray, rng) -> np.ndarray:
    """Mirror a random half (each frame with probability ½) of a (n, H, W) batch along its last axis."""
    chosen = rng.random(len(x)) < 0.5
    if chosen.any():
        x = x.copy()
        x[chosen] = x[chosen, :, ::-1]
    return x


def _run_epoch(net, optimizer, frames, order, config, model_mean, progress, desc, epoch: int = 0):
    import torch
    from tqdm.auto import tqdm

    net.train()
    criterion = torch.nn.CrossEntropyLoss(reduction="sum")
    code_to_output = _code_to_output(frames.ds.classes)
    seen = correct = 0
    total_loss = 0.0
    n = len(order)
    # A last batch of one frame is dropped: BatchNorm cannot normalise one frame whose last feature map is
    # 1 × 1 (small binned inputs), and one frame out of an epoch changes nothing.
    usable = n - 1 if (n % config.batch_size == 1 and n > 1) else n
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0xF11B, epoch]))
    with tqdm(total=usable, unit="img", desc=desc, disable=not progress, leave=False) as bar:
        for binned, labels, _ in frames.batches(order[:usable], config.batch_size):
            centred = binned - model_mean
            x = _as_input(_flip_half(centred, rng) if config.flip else centred)
            y = torch.from_numpy(code_to_output[labels])
            optimizer.zero_grad(set_to_none=True)
            logits = net(x)
            loss = criterion(logits, y)
            if not torch.isfinite(loss):
                raise Diverged(f"loss {float(loss)} at epoch {desc}, after {seen} frames: the learning rate "
                               f"{optimizer.param_groups[0]['lr']:g} is too high")
            (loss / len(y)).backward()
            optimizer.step()
            total_loss += float(loss.detach())
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.update(len(y))
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
    return total_loss / max(seen, 1), correct / max(seen, 1)


#: Training frames whose batch statistics set BatchNorm's running statistics after each epoch.
BN_FRAMES = 256


def _recompute_batchnorm(net, frames, train_idx, config, model_mean, epoch: int) -> None:
    """Set every BatchNorm's running statistics to the average over :data:`BN_FRAMES` training frames
    (seeded per epoch) of the batch statistics under the epoch's final weights ("precise BN")."""
    import torch

    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0xB4, epoch]))
    chosen = np.sort(rng.choice(train_idx, min(BN_FRAMES, len(train_idx)), replace=False))
    batch = max(2, min(32, len(chosen)))
    layers = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    net.train()
    with torch.no_grad():
        for binned, _, _ in frames.batches(chosen, batch):
            if len(binned) > 1:
                net(_as_input(binned - model_mean))


def _code_to_output(classes) -> np.ndarray:
    from .dataset import ALL_CLASSES

    table = np.full(len(ALL_CLASSES), -1, dtype=np.int64)
    for k, c in enumerate(classes):
        table[ALL_CLASSES.index(c)] = k
    return table


def _validate(net, frames, indices, config, model_mean, batch_size=64):
    import torch

    net.eval()
    code_to_output = _code_to_output(frames.ds.classes)
    criterion = torch.nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct = 0.0, 0
    with torch.inference_mode():
        for binned, labels, _ in frames.batches(indices, batch_size):
            x = _as_input(binned - model_mean)
            y = torch.from_numpy(code_to_output[labels])
            logits = net(x)
            total_loss += float(criterion(logits, y))
            correct += int((logits.argmax(1) == y).sum())
    return total_loss / len(indices), correct / len(indices)


def train(data, out, config: TrainConfig = TrainConfig(), *, resume: bool = True, save_best: bool = True,
          progress: bool = True, threads: int | None = None, log=None,
          frame_store_mib: float = FRAME_STORE_MIB, frames: BinnedFrames | None = None) -> TrainResult:
    """Train a DeepFreak network on a data set's training split, choosing the epoch by validation accuracy.

    BatchNorm's running statistics, which the network uses at evaluation, are recomputed after every epoch
    from :data:`BN_FRAMES` training frames under the epoch's final weights ("precise BN"; Wu & Johnson 2021,
    https://arxiv.org/abs/2105.07576) instead of torch's exponential average during training: that one
    trails the changing weights and needs hundreds of batches to forget its start, more than a short BOHB
    budget on a small set gives it, and validating with stale statistics scores noise.

    Every epoch ends with a checkpoint in ``out/checkpoint/`` (weights, momentum buffers, history; written
    atomically). With ``resume=True`` a later call with the same configuration (any number of ``epochs``)
    continues after the last finished epoch: the weights then equal an uninterrupted run's (on the same
    machine and thread count), so a killed run loses at most one epoch. The best epoch's model is saved in
    ``out`` itself (``model.json`` + ``model.safetensors``).

    Parameters
    ----------
    data : str, os.PathLike or diffranb.dataset.Dataset
        A built data set (:func:`diffranb.dataset.build`).
    out : str or os.PathLike
        Directory of the model and its checkpoint (created).
    config : TrainConfig
    resume : bool
        Continue from ``out``'s checkpoint if there is one (False: start afresh, discarding it).
    save_best : bool
        Save the best model into ``out`` (BOHB's evaluations skip it to save disk).
    progress : bool
        Progress bars (tqdm).
    threads : int, optional
        torch's intra-op threads for this call (default: as set).
    log : callable, optional
        Called with each epoch's history entry.
    frame_store_mib : float
        Memory for the binned training and validation frames (:class:`BinnedFrames`), read from the file in
        the first epoch and kept for the others; 0 reads every epoch from the file. The results are the same.
    frames : BinnedFrames, optional
        A store to use instead (of this open data set, with the configuration's binning and mode, made for
        at least its training and validation frames): BOHB's workers keep one across their evaluations.

    Returns
    -------
    TrainResult
    """
    import torch
    from tqdm.auto import tqdm

    from .dataset import open_dataset

    t_start = time.perf_counter()
    out = Path(out)
    if isinstance(data, (str, os.PathLike)):
        with open_dataset(data) as ds:
            return train(ds, out, config, resume=resume, save_best=save_best, progress=progress,
                         threads=threads, log=log, frame_store_mib=frame_store_mib, frames=frames)
    ds = data
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        train_idx = subset(ds, "train", config.max_train, config.seed)
        val_idx = subset(ds, "val", config.max_val, config.seed)
        if len(train_idx) < 2 or len(val_idx) < 1:
            raise ValueError(f"{ds.path}: {len(train_idx)} training and {len(val_idx)} validation frames; "
                             "need at least 2 and 1")
        mask = None
        if config.input == "spots":
            from .features import FeatureStore

            # learnt from the training split only (a seeded sample), cached beside the set
            mask = FeatureStore(ds.path, progress=progress).mask()
        if frames is None:
            frames = BinnedFrames(ds, config.binning, config.bin_mode, np.concatenate([train_idx, val_idx]),
                                  max_mib=frame_store_mib, input_kind=config.input, mask=mask)
        elif frames.ds is not ds or (frames.binning, frames.mode, frames.input) != \
                (config.binning, config.bin_mode, config.input) or not _same_mask(frames.mask, mask):
            raise ValueError(f"frames: a store of another data set or serving {frames.input} binned "
                             f"{frames.binning} × {frames.binning} by {frames.mode} (mask "
                             f"{mask_digest(frames.mask)}), not {config.input} binned {config.binning} × "
                             f"{config.binning} by {config.bin_mode} (mask {mask_digest(mask)})")
        frame = ds.images.shape[1:]
        input_shape = (frame[0] // config.binning, frame[1] // config.binning)
        final = feature_shapes(topology(config.topology), input_shape)["stage4"]
        if config.batch_size == 1 and final == (1, 1):
            raise Infeasible(f"batch size 1 with topology {config.topology}'s 1 × 1 last feature map at "
                             f"{input_shape[0]} × {input_shape[1]} input: BatchNorm cannot train on one value")
        net = build_network(config.topology, len(ds.classes), input_shape, seed=config.seed)
        optimizer = torch.optim.SGD(net.parameters(), lr=config.learning_rate, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
        state, tensors = (None, None)
        if resume:
            state, tensors = _read_checkpoint(out)
        else:
            shutil.rmtree(out / "checkpoint", ignore_errors=True)
        if state is not None:
            saved = TrainConfig(**state["config"])
            if not saved.same_run(config) or state["dataset_hash"] != ds.content_sha256:
                raise ValueError(f"{str(out)!r} holds a checkpoint of another run ({state['config']}, data set "
                                 f"{state['dataset_hash'][:12]}…): use another directory or resume=False")
            saved_mask = tensors["detector_mask"].numpy().astype(bool) if "detector_mask" in tensors else None
            if config.input == "spots" and state.get("spot_input") != _spot_input_version():
                raise ValueError(f"{str(out)!r}: a checkpoint of a spot input made as {state.get('spot_input')}; "
                                 f"this diffranb makes {_spot_input_version()}: use another directory or "
                                 "resume=False")
            if not _same_mask(saved_mask, mask):
                raise ValueError(f"{str(out)!r}: the checkpoint's detector mask is not the one the set's training "
                                 "frames give now: use another directory or resume=False")
            net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
            for name, p in net.named_parameters():
                buf = tensors.get(f"momentum.{name}")
                if buf is not None:
                    optimizer.state[p]["momentum_buffer"] = buf.clone()
            mean = np.asarray(tensors["input_mean"].numpy(), dtype=np.float32)
            history, best = state["history"], state["best"]
        else:
            mean = mean_image(ds, train_idx, config.binning, config.bin_mode, progress=progress, frames=frames,
                              input_kind=config.input, mask=mask)
            history, best = [], {"epoch": 0, "val_accuracy": -1.0}
        done = len(history)
        info = {"dataset_hash": ds.content_sha256, "dataset_path": str(ds.path), "train_config":
                dataclasses.asdict(config), "n_train": int(len(train_idx)), "n_val": int(len(val_idx))}
        with tqdm(total=config.epochs, initial=min(done, config.epochs), unit="epoch", desc="training",
                  disable=not progress or done >= config.epochs) as bar:
            for epoch in range(done, config.epochs):
                t0 = time.perf_counter()
                lr = learning_rate(config, epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                order = _epoch_order(train_idx, config.seed, epoch)
                train_loss, train_acc = _run_epoch(net, optimizer, frames, order, config, mean, progress,
                                                   f"epoch {epoch + 1}", epoch)
                t_train = time.perf_counter() - t0
                _recompute_batchnorm(net, frames, train_idx, config, mean, epoch)
                val_loss, val_acc = _validate(net, frames, val_idx, config, mean)
                entry = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "train_accuracy": train_acc,
                         "val_loss": val_loss, "val_accuracy": val_acc, "seconds": time.perf_counter() - t0,
                         "train_images_per_s": len(order) / t_train, "max_rss_mib": _max_rss_mib()}
                history.append(entry)
                if val_acc > best["val_accuracy"]:
                    best = {"epoch": epoch + 1, "val_accuracy": val_acc}
                    if save_best:
                        _save_model(out, net, ds.classes, config.binning, config.bin_mode, mean,
                                    {**info, "epoch": epoch + 1, "val_accuracy": val_acc},
                                    input_kind=config.input, mask=mask)
                _write_checkpoint(out, net, optimizer, mean, {
                    "format": CHECKPOINT_FORMAT, "config": dataclasses.asdict(config), "epochs_done": epoch + 1,
                    "dataset_hash": ds.content_sha256, "history": history, "best": best,
                    **({"spot_input": _spot_input_version()} if config.input == "spots" else {})}, mask)
                if log is not None:
                    log(entry)
                bar.update(1)
                bar.set_postfix(val_acc=f"{val_acc:.4f}", refresh=False)
        if save_best and (out / "model.json").exists():
            meta = json.loads((out / "model.json").read_text())
            meta["history"] = history
            (out / "model.json.writing").write_text(json.dumps(meta, indent=1))
            os.replace(out / "model.json.writing", out / "model.json")
        if done > config.epochs:  # a checkpoint of a longer run, asked for its first epochs (BOHB budgets)
            history = history[:config.epochs]
            top = max(history, key=lambda e: e["val_accuracy"])
            best = {"epoch": top["epoch"], "val_accuracy": top["val_accuracy"]}
        return TrainResult(path=out, history=history, best_epoch=best["epoch"],
                           best_val_accuracy=best["val_accuracy"], resumed_from=done,
                           seconds=time.perf_counter() - t_start)
    finally:
        torch.set_num_threads(previous_threads)


# ---------------------------------------------------------------------------------------------------------
# What the network looks at
# ---------------------------------------------------------------------------------------------------------

def _upsample(maps: np.ndarray, model: DeepFreakModel, frame_shape) -> np.ndarray:
    """Maps on the network's input grid, repeated back onto the frame's pixels (zero where binning cut)."""
    b = model.binning
    up = np.repeat(np.repeat(maps, b, axis=1), b, axis=2)
    out = np.zeros((len(maps),) + tuple(frame_shape), dtype=np.float32)
    out[:, :up.shape[1], :up.shape[2]] = up
    return out


def saliency(model: DeepFreakModel, images8, target=None) -> np.ndarray:
    """Gradient saliency (Simonyan et al. 2013): |∂ score / ∂ input| of the target class, per pixel.

    Parameters
    ----------
    model : DeepFreakModel
    images8 : (n, M, N) uint8
    target : (n,) int, optional
        Network output indices (positions in ``model.classes``); default the predicted class.

    Returns
    -------
    (n, M, N) float32
        Each map scaled to a maximum of 1.
    """
    import torch

    images8 = np.asarray(images8)
    x = model.preprocess(images8).requires_grad_(True)
    logits = model.network(x)
    idx = logits.argmax(1) if target is None else torch.as_tensor(np.asarray(target), dtype=torch.int64)
    logits.gather(1, idx[:, None]).sum().backward()
    model.network.zero_grad(set_to_none=True)
    maps = x.grad.abs()[:, 0].detach().numpy()
    maps /= np.maximum(maps.reshape(len(maps), -1).max(axis=1), 1e-12)[:, None, None]
    return _upsample(maps, model, images8.shape[1:])


def grad_cam(model: DeepFreakModel, images8, target=None) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) on the last stage: where the evidence for the target class lies.

    The last stage's channels are weighted by the mean gradient of the class score over their map, summed,
    clipped at zero and interpolated (bilinear) to the input; each map is scaled to a maximum of 1 (all
    zero when nothing speaks for the class).

    Parameters
    ----------
    model : DeepFreakModel
    images8 : (n, M, N) uint8
    target : (n,) int, optional
        Network output indices; default the predicted class.

    Returns
    -------
    (n, M, N) float32
    """
    import torch
    import torch.nn.functional as F

    images8 = np.asarray(images8)
    x = model.preprocess(images8)
    net = model.network
    feats = net.features(x)
    feats.retain_grad()
    logits = net.fc(torch.flatten(net.pool2(feats), 1))
    idx = logits.argmax(1) if target is None else torch.as_tensor(np.asarray(target), dtype=torch.int64)
    logits.gather(1, idx[:, None]).sum().backward()
    net.zero_grad(set_to_none=True)
    weights = feats.grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * feats).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0].detach().numpy()
    cam /= np.maximum(cam.reshape(len(cam), -1).max(axis=1), 1e-12)[:, None, None]
    return _upsample(cam, model, images8.shape[1:])


# ---------------------------------------------------------------------------------------------------------
# Speed
# ---------------------------------------------------------------------------------------------------------

def _timed(fn, min_seconds: float, min_calls: int = 2) -> float:
    """Seconds per call of ``fn`` after one warm-up call (oneDNN builds its kernels on the first)."""
    fn()
    calls, t0 = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - t0 < min_seconds:
        fn()
        calls += 1
    return (time.perf_counter() - t0) / calls


def _train_rate(top, n_classes, size, batch, rng, min_seconds) -> float:
    """Training frames per second of SGD steps on random ``size``² inputs."""
    import torch

    net = build_network(top, n_classes, (size, size)).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-5)
    x = _as_input(rng.random((batch, size, size), dtype=np.float32))
    y = torch.as_tensor(rng.integers(0, n_classes, batch))

    return batch / _timed(lambda: _sgd_step(net, opt, x, y), min_seconds)


def _sgd_step(net, opt, x, y) -> None:
    """One timed training step of the benchmarks: forward, cross-entropy, backward, update."""
    import torch

    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()


def benchmark(top: int = CHOSEN_TOPOLOGY, pixels: int = 512, *, threads=(1, 2), batch_sizes=(1, 64),
              train_binnings=(4, 1), train_batch: int = 16, min_seconds: float = 5.0,
              model: DeepFreakModel | None = None) -> dict:
    """Frames per second of a DeepFreak network on ``pixels``² frames (random weights and frames).

    Training first: one SGD step (forward, backward, update) on batches of ``train_batch`` at each binning,
    on all threads, with the process's peak resident memory after each. Then inference: for each thread
    count and batch size, the whole path from 8-bit frames (binning and mean subtraction included) to label
    codes.

    Without ``model``: topology ``top`` with random weights, inference at full resolution (binning 1). With a
    trained ``model`` (:func:`load_model`): its own topology, binning and bin mode, its training batch size
    (16 if it has no training record), and inference through the model itself with its weights, as it would
    sort a beamline's frames; ``top``, ``pixels``, ``train_binnings`` and ``train_batch`` are then ignored
    (the frames are the size it was trained on).

    Returns
    -------
    dict
        ``train_images_per_s_bin{k}``, ``max_rss_mib_after_train_bin{k}``, ``infer_frames_per_s_{t}thread_batch{b}``,
        ``max_rss_mib`` and what was measured (topology, pixels, binning, torch version, cores).
    """
    import torch

    rng = np.random.default_rng(0)
    classes = ("blank", "no-crystal", "weak", "good", "strong")
    if model is not None:
        if model.network.topology not in TOPOLOGIES:
            raise ValueError(f"the model's topology ({model.network.topology.describe()}) is none of the 13 "
                             "of deepfreak.TOPOLOGIES")
        top, classes = TOPOLOGIES.index(model.network.topology), model.classes
        train_binnings = (model.binning,)
        train_batch = int((model.info.get("train_config") or {}).get("batch_size", 16))
        # the frames it was trained on: the spot input's mask has their shape; binning may have cut a margin
        pixels = model.mask.shape[0] if model.mask is not None else model.mean.shape[0] * model.binning
    out = {"topology": top + 1, "topology_description": topology(top).describe(), "pixels": pixels,
           "train_batch": train_batch, "cores": os.cpu_count(), "torch": torch.__version__}
    if model is not None:
        out.update(model="trained", binning=model.binning, bin_mode=model.bin_mode, input=model.input)
    import cv2

    previous, previous_cv2 = torch.get_num_threads(), cv2.getNumThreads()
    try:
        torch.set_num_threads(max(threads))
        for k in train_binnings:
            out[f"train_images_per_s_bin{k}"] = _train_rate(top, len(classes), pixels // k, train_batch, rng,
                                                            min_seconds)
            out[f"max_rss_mib_after_train_bin{k}"] = _max_rss_mib()
        if model is None:
            net = build_network(top, len(classes), (pixels, pixels))
            model = DeepFreakModel(net, classes, 1, np.zeros((pixels, pixels), np.float32))
        for t in threads:
            torch.set_num_threads(t)
            cv2.setNumThreads(t)  # the spot input's median and box filters: as many threads as the network
            for b in batch_sizes:
                frames = rng.integers(0, 256, (b, pixels, pixels), dtype=np.uint8)
                seconds = _timed(lambda: model.predict(frames, batch_size=b), min_seconds)
                out[f"infer_frames_per_s_{t}thread_batch{b}"] = b / seconds
        out["max_rss_mib"] = _max_rss_mib()
    finally:
        torch.set_num_threads(previous)
        cv2.setNumThreads(previous_cv2)
    return out


def benchmark_frames(ds, *, top: int = CHOSEN_TOPOLOGY, binning: int = 4, mode: str = "mean", batch: int = 16,
                     n_frames: int = 320, rounds: int = 2, input_kind: str = "frame", mask=None) -> dict:
    """Frames per second of training on a data set's own frames, read from the file every time versus served
    by :class:`BinnedFrames` after a first pass, in the same run.

    ``n_frames`` training frames in a seeded shuffled order; each figure is the fastest of ``rounds``
    passes, file and memory alternating so that a change in the machine's load hits both. Loading alone
    (batches delivered, nothing computed) and SGD steps of topology ``top`` on the delivered batches (on all
    of torch's threads) are timed separately. ``input_kind`` and ``mask``: what is served (:func:`network_input`).

    Returns
    -------
    dict
        ``load_frames_per_s_{file,store}``, ``train_frames_per_s_{file,store}``, ``train_speedup``,
        ``store_mib``, and what was measured.
    """
    import torch

    if n_frames < 2 * batch:
        raise ValueError(f"n_frames = {n_frames}: need at least two batches of {batch}")
    train_idx = ds.indices("train")
    order = np.random.default_rng(0).permutation(train_idx)[:n_frames]
    from_file = BinnedFrames(ds, binning, mode, order, max_mib=0, input_kind=input_kind, mask=mask)
    store = BinnedFrames(ds, binning, mode, order, max_mib=math.inf, input_kind=input_kind, mask=mask)
    for _ in store.batches(order, 64):  # the first pass, which reads
        pass
    m, k = ds.images.shape[1:]
    net = build_network(top, len(ds.classes), (m // binning, k // binning), seed=0).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)
    code_to_output = _code_to_output(ds.classes)

    def load(source):
        for _ in source.batches(order, batch):
            pass

    def steps(source):
        for x, labels, _ in source.batches(order, batch):
            _sgd_step(net, opt, _as_input(x), torch.from_numpy(code_to_output[labels]))

    steps(store)  # warm-up: torch's first steps allocate and choose their kernels
    best = {}
    for _ in range(rounds):
        for what, fn in (("load", load), ("train", steps)):
            for name, source in (("file", from_file), ("store", store)):
                t0 = time.perf_counter()
                fn(source)
                seconds = time.perf_counter() - t0
                key = f"{what}_frames_per_s_{name}"
                best[key] = max(best.get(key, 0.0), len(order) / seconds)
    return {"topology": top + 1, "binning": binning, "bin_mode": mode, "input": input_kind, "batch": batch,
            "frames": len(order),
            "threads": torch.get_num_threads(), **best,
            "train_speedup": best["train_frames_per_s_store"] / best["train_frames_per_s_file"],
            "store_mib": store.nbytes / 2**20}


# ---------------------------------------------------------------------------------------------------------
# The record of a run
# ---------------------------------------------------------------------------------------------------------

def report(model_dir, data, out_dir, *, bohb_dir=None, command: str = "", wall_seconds: float | None = None) -> dict:
    """Test a trained model and write its record: ``metrics.json``, ``learning_curves.png``,
    ``confusion.png`` (and ``bohb.png`` with the search that chose it).

    ``metrics.json`` holds the command, the diffranb version, the data set's content hash, the wall time,
    the test metrics (:func:`diffranb.evaluate.evaluate_model`), the training configuration and history,
    and the search's summary.

    Parameters
    ----------
    model_dir : str or os.PathLike
        A model :func:`train` saved.
    data : str or os.PathLike
        The data set it was trained on.
    out_dir : str or os.PathLike
        Created if missing; its files are overwritten.
    bohb_dir : str or os.PathLike, optional
        The BOHB search directory (:func:`diffranb.bohb.run_bohb`).
    command : str
        The command line that produced the run.
    wall_seconds : float, optional
        Wall time of the whole run (search and training); default the training's.

    Returns
    -------
    dict
        What ``metrics.json`` holds.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from . import __version__, evaluate, viz
    from .dataset import open_dataset

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_model(model_dir)
    with open_dataset(data) as ds:
        test = evaluate.evaluate_model(model, ds, "test")
    history = model.info.get("history", [])
    record = {"command": command, "diffranb_version": __version__, "dataset_sha256": test["dataset_sha256"],
              "wall_seconds": wall_seconds if wall_seconds is not None else sum(e["seconds"] for e in history),
              "test": test, "train_config": model.info.get("train_config"), "best_epoch": model.info.get("epoch"),
              "history": history, "paper": evaluate.PAPER}
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    viz.plot_learning_curves(history, axes=axes)
    fig.savefig(out_dir / "learning_curves.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.8, 4.2), layout="constrained")
    viz.plot_confusion(test["confusion"], test["classes"], ax=ax, colorbar=True)
    fig.savefig(out_dir / "confusion.png", dpi=120)
    plt.close(fig)
    if bohb_dir is not None:
        from . import bohb

        runs = bohb.read_log(bohb_dir)
        summary_file = Path(bohb_dir) / "summary.json"
        record["bohb"] = {"summary": json.loads(summary_file.read_text()) if summary_file.exists() else None,
                          "best3_by_budget": {str(k): v for k, v in bohb.best_by_budget(runs).items()},
                          "n_evaluations": len(runs), "evaluation_span_seconds": bohb.evaluation_span(runs)}
        fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
        viz.plot_bohb(runs, ax=ax)
        fig.savefig(out_dir / "bohb.png", dpi=120)
        plt.close(fig)
    (out_dir / "metrics.json").write_text(json.dumps(record, indent=1))
    return record


def load_report(out_dir) -> dict | None:
    """The ``metrics.json`` that :func:`report` wrote into ``out_dir``, or None when there is none."""
    from .io import load_record

    return load_record(out_dir, ("test", "train_config"), "diffranb.deepfreak.report")


def describe_report(record: dict) -> str:
    """A record of :func:`report` as text: command, version, data set, the search that chose the
    configuration (if any), the training, then the test metrics next to the paper's."""
    from . import evaluate

    cfg = record["train_config"] or {}
    history = record.get("history") or []
    lines = [f"command: {record['command'] or '(not recorded)'}",
             f"diffranb {record['diffranb_version']}, data set {record['dataset_sha256'][:16]}…"]
    if record.get("bohb"):
        search = record["bohb"].get("summary") or {}
        seconds = search.get("seconds_all_calls", record["bohb"].get("evaluation_span_seconds"))
        took = f" in {seconds / 60:.1f} min" if seconds is not None else " (time not recorded)"
        budgets = ", ".join(f"{b:g}" for b in search.get("budgets", []))
        lines.append(f"chosen by BOHB: {record['bohb']['n_evaluations']} evaluations{took}"
                     + (f", budgets {budgets} epochs" if budgets else "")
                     + (f", settings {json.dumps(search['settings'])}" if search.get("settings") else ""))
        space = (search.get("search") or {}).get("space")
        if space and len(space["topology"]) < len(TOPOLOGIES):
            lines.append(f"  over topologies {', '.join(str(t + 1) for t in space['topology'])} of "
                         f"{len(TOPOLOGIES)} (the paper's numbers; the command counts from 0): "
                         f"{search['search']['command']}")
    else:
        lines.append("configured by hand (no search recorded)")
    if cfg:
        from .bohb import describe_config

        shown = "spot significance" if cfg.get("input") == "spots" else "frames"
        lines.append(f"trained: {describe_config(cfg)}; {cfg['epochs']} epochs on {shown} binned {cfg['binning']}× "
                     f"by {cfg.get('bin_mode', 'mean')}, seed {cfg['seed']}"
                     + (", mirrored in training" if cfg.get("flip") else ""))
    if history:
        best = max(history, key=lambda e: e["val_accuracy"])
        lines.append(f"{len(history)} epochs in {sum(e['seconds'] for e in history) / 60:.1f} min, best epoch "
                     f"{record.get('best_epoch') or best['epoch']} (validation {100 * best['val_accuracy']:.2f} %), "
                     f"peak memory {max(e['max_rss_mib'] for e in history) / 1024:.2f} GiB")
    lines += ["", evaluate.format_report({"DeepFreak": record["test"]})]
    return "\n".join(lines)


def compare_records(records: dict) -> str:
    """Full-scale records of :func:`report` side by side, as a Markdown table: how each was configured and
    trained, and its test figures next to the paper's.

    Parameters
    ----------
    records : dict
        Name → record (:func:`load_report`); ``None`` values are skipped.

    Returns
    -------
    str
        One row per record, then the paper's.
    """
    from .bohb import describe_config
    from .evaluate import PAPER

    rows = ["| run | configuration | input | epochs | training (min) | test accuracy | binary | macro-F1 |",
            "|---|---|---|---|---|---|---|---|"]
    shown = {name: r for name, r in records.items() if r is not None}
    if not shown:
        raise ValueError("compare_records: no record to compare")
    for name, r in shown.items():
        cfg, t = r["train_config"] or {}, r["test"]
        history = r.get("history") or []
        minutes = f"{sum(e['seconds'] for e in history) / 60:.0f}" if history else "—"
        chosen = "BOHB: " if r.get("bohb") else "set by hand: "
        side = f"binned {cfg['binning']}× by {cfg.get('bin_mode', 'mean')}" if cfg else "—"
        if cfg.get("input") == "spots":
            side = "spot significance, " + side
        if cfg.get("flip"):
            side += ", mirrored in training"
        rows.append(f"| {name} | {chosen}{describe_config(cfg) if cfg else '—'} | {side} | "
                    f"{cfg.get('epochs', '—')} | {minutes} | {100 * t['accuracy']:.2f} % | "
                    f"{100 * t['binary_accuracy']:.2f} % | {t['macro_f1']:.3f} |")
    rows.append(f"| paper | BOHB, 9 GPU-days | full frames | | | {PAPER['test_accuracy']['DeepFreak']:.2f} % | "
                f"{PAPER['binary_accuracy']:.2f} % | |")
    return "\n".join(rows)
