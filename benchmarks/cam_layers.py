"""Which layers should a class-activation map use? Train small models on the synthetic images (whose lesions are
known) and score each choice of layers by the energy inside the lesion and the pointing game.

    python benchmarks/cam_layers.py --size 96 --steps 150

Prints one table row per architecture and layer set (test images with a lesion only). The default of
:mod:`medens.evaluate.cam` comes from this measurement (``--size 96 --steps 100``, 2026-12-06: the last three
stages of a BatchNorm ConvNeXt-Atto put 0.066 of the map's energy inside the lesion and hit it in 0.39 of the
pointing games, the last stage alone 0.045 and 0.02; recorded in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import timm
import torch

from medens.data import build_transforms, load_dataset
from medens.data.masks import lesion_mask, mask_view
from medens.evaluate.cam import cam_layer_choices, class_activation_maps
from medens.evaluate.lesion import energy_inside, pointing_hits
from medens.models.arch import norm_kwargs

MODELS = [("convnext_atto", "layer"), ("convnext_atto", "batch"), ("resnet18", None)]


def train(arch: str, norm: str | None, x: torch.Tensor, y: torch.Tensor, classes: int, steps: int,
          seed: int) -> torch.nn.Module:
    """A classifier trained from random weights for ``steps`` AdamW steps of 32 images (random horizontal flips)."""
    torch.manual_seed(seed)
    model = timm.create_model(arch, num_classes=classes, **(norm_kwargs(arch, norm) if norm else {}))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(x), (32,))
        xb = x[batch]
        xb = torch.where(torch.rand(32, 1, 1, 1) < 0.5, xb.flip(3), xb)
        loss = torch.nn.functional.cross_entropy(model(xb), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _grid_side(model: torch.nn.Module, layer: str, x: torch.Tensor) -> int:
    """The side of ``layer``'s output grid for input ``x``."""
    seen: list[int] = []
    hook = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: seen.append(o.shape[-1]))
    with torch.no_grad():
        model(x)
    hook.remove()
    return seen[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--images", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", nargs="+", default=[f"{a}:{n or 'bn'}" for a, n in MODELS],
                   help="ARCH:NORM pairs (NORM layer, batch, or bn for a non-ConvNeXt)")
    args = p.parse_args()
    models = [(a, None if n == "bn" else n) for a, n in (m.split(":") for m in args.models)]
    ds = load_dataset("synthetic", None, num_images=args.images, image_size=args.size, num_classes=3, seed=args.seed)
    n_test = args.images // 5
    test_idx = [i for i in range(n_test) if lesion_mask(ds, i) is not None]
    train_idx = list(range(n_test, args.images))
    evaluate = build_transforms(args.size, train=False, crop_pct=1.0)
    geometry = build_transforms(args.size, train=False, normalize=False, crop_pct=1.0, interpolation="nearest")
    x = torch.stack([evaluate(ds[i][0]) for i in test_idx])
    train_x = torch.stack([evaluate(ds[i][0]) for i in train_idx])  # generated once, flipped while training
    train_y = torch.tensor([ds.targets[i] for i in train_idx])
    masks = np.stack([mask_view(lesion_mask(ds, i), geometry) for i in test_idx])
    print(f"{len(train_idx)} training images, {len(test_idx)} test images with a lesion, {args.size} px")
    print("| model | layers | grid | accuracy | energy inside | pointing game |")
    print("| --- | --- | --- | --- | --- | --- |")
    for arch, norm in models:
        start = time.perf_counter()
        model = train(arch, norm, train_x, train_y, len(ds.classes), args.steps, args.seed)
        trained_s = time.perf_counter() - start
        with torch.no_grad():
            acc = float((model(x).argmax(1) == torch.tensor([ds.targets[i] for i in test_idx])).float().mean())
        stages = cam_layer_choices(model)
        sets = [[stages[-1]], [stages[-2]], stages[-2:], stages[-3:]]
        for layers in sets:
            maps = class_activation_maps(model, x, torch.tensor([ds.targets[i] for i in test_idx]),
                                         layers=layers).maps.numpy()
            side = _grid_side(model, layers[-1], x[:1])
            e, h = np.nanmean(energy_inside(maps, masks)), np.nanmean(pointing_hits(maps, masks))
            print(f"| {arch} ({norm or 'bn'}) | {'+'.join(layers)} | {side} (last) | {acc:.2f} | {e:.3f} | "
                  f"{h:.2f} |")
        print(f"<!-- {arch} {norm}: trained in {trained_s:.0f} s -->")
    area = float(masks.mean())
    print(f"\nlesion share of the image area (a uniform map's energy inside): {area:.3f}")


if __name__ == "__main__":
    main()
