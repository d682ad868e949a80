"""Prompt fidelity on the toy world: a small CNN that reads a toy image's shape and colour, and a toy FID.

    python -m erasure.toy.checker --out assets/toy-checker          # train (a few minutes on a CPU)

Generated toy images are judged against their prompt: the checker predicts the scene's shape and colour, and
``fidelity`` is the share of images where both match the prompt. It is trained on scenes *with* implicit
concepts pasted on, so a watermark does not change its answer. ``toy_fid`` is the Fréchet distance between
the checker's penultimate features of two image sets: a cheap, domain-matched stand-in for Inception FID.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from datasets_icd.toyworld import COLOURS, SHAPES, ToyWorld, ToyWorldConfig

DEFAULT_DIR = Path("assets/toy-checker")  # in a checkout of this repository, where commands run from
INPUT_SIZE = 64
COLOUR_NAMES = list(COLOURS)


class ToyChecker(nn.Module):
    """Four strided conv blocks, global pooling, two heads (shape, colour)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        layers, channels = [], 3
        for out in (width, 2 * width, 4 * width, 4 * width):
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.BatchNorm2d(out), nn.SiLU()]
            channels = out
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.shape_head = nn.Linear(channels, len(SHAPES))
        self.colour_head = nn.Linear(channels, len(COLOUR_NAMES))
        self.width = width

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.body(pixels)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(pixels)
        return self.shape_head(feats), self.colour_head(feats)


def to_pixels(images: list[Image.Image]) -> torch.Tensor:
    """Any-size PIL images → the checker's [-1, 1] NCHW input."""
    arrays = [np.asarray(im.convert("RGB").resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR)) for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def parse_prompt(prompt: str) -> tuple[str, str]:
    """(shape, colour) named in a toy caption such as "two red circles on the left on a blue background"."""
    words = prompt.lower().replace(",", " ").split()
    colour = next((w for w in words if w in COLOURS), None)
    shape = next((s for w in words for s in SHAPES if w in (s, s + "s")), None)
    if colour is None or shape is None:
        raise ValueError(f"prompt {prompt!r} names no toy shape and colour; fidelity needs toy-world captions")
    return shape, colour


def save_checker(model: ToyChecker, out_dir: str | Path, metrics: dict) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out_dir / "model.safetensors")
    (out_dir / "config.json").write_text(json.dumps({"width": model.width, **metrics}, indent=2))


def load_checker(path: str | Path = DEFAULT_DIR) -> ToyChecker:
    path = Path(path)
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path}: no toy checker; train one with `python -m erasure.toy.checker --out {path}`")
    config = json.loads((path / "config.json").read_text())
    model = ToyChecker(config["width"])
    model.load_state_dict(load_file(path / "model.safetensors"))
    return model.eval()


@torch.no_grad()
def predict(model: ToyChecker, images: list[Image.Image], batch_size: int = 256) -> list[tuple[str, str]]:
    out = []
    for i in range(0, len(images), batch_size):
        shape_logits, colour_logits = model(to_pixels(images[i : i + batch_size]))
        out += [
            (SHAPES[s], COLOUR_NAMES[c]) for s, c in zip(shape_logits.argmax(1), colour_logits.argmax(1), strict=True)
        ]
    return out


def fidelity(model: ToyChecker, images: list[Image.Image], prompts: list[str]) -> dict[str, float]:
    """Shares of images whose shape, colour, and both, match their prompt."""
    predicted = predict(model, images)
    wanted = [parse_prompt(p) for p in prompts]
    shape = np.mean([p[0] == w[0] for p, w in zip(predicted, wanted, strict=True)])
    colour = np.mean([p[1] == w[1] for p, w in zip(predicted, wanted, strict=True)])
    both = np.mean([p == w for p, w in zip(predicted, wanted, strict=True)])
    return {"shape": float(shape), "colour": float(colour), "fidelity": float(both)}


@torch.no_grad()
def toy_fid(model: ToyChecker, images_a: list[Image.Image], images_b: list[Image.Image]) -> float:
    """Fréchet distance between Gaussians fitted to the checker features of two image sets."""
    feats = [model.features(to_pixels(images)).double().numpy() for images in (images_a, images_b)]
    (mu_a, mu_b), (cov_a, cov_b) = [f.mean(0) for f in feats], [np.cov(f, rowvar=False) for f in feats]
    # tr(sqrt(A B)) is the sum of the square roots of A B's eigenvalues (real and >= 0 for covariances).
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvals(cov_a @ cov_b).real, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)


def _labelled(world: ToyWorld, indices: range) -> tuple[list[Image.Image], torch.Tensor, torch.Tensor]:
    samples = [world.sample(i) for i in indices]
    shapes = torch.tensor([SHAPES.index(s.attributes["shape"]) for s in samples])
    colours = torch.tensor([COLOUR_NAMES.index(s.attributes["colour"]) for s in samples])
    return [s.image for s in samples], shapes, colours


def train_checker(num_images: int = 6000, steps: int = 1500, batch_size: int = 64, seed: int = 0) -> tuple:
    """Train on toy scenes with every implicit concept mixed in; report accuracy on a held-out world seed."""
    torch.manual_seed(seed)
    rates = {"watermark": 0.4, "qrcode": 0.3, "text": 0.4}
    images, shapes, colours = _labelled(
        ToyWorld(ToyWorldConfig(seed=seed + 100, concept_rates=rates)), range(num_images)
    )
    pixels = to_pixels(images)
    model = ToyChecker()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    for _ in (bar := tqdm(range(steps), desc="toy checker")):
        idx = torch.randint(num_images, (batch_size,), generator=generator)
        shape_logits, colour_logits = model(pixels[idx])
        loss = F.cross_entropy(shape_logits, shapes[idx]) + F.cross_entropy(colour_logits, colours[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    held_images, held_shapes, held_colours = _labelled(
        ToyWorld(ToyWorldConfig(seed=seed + 200, concept_rates=rates)), range(1000)
    )
    predicted = predict(model, held_images)
    metrics = {
        "heldout_shape_accuracy": float(
            np.mean([SHAPES[s] == p[0] for s, p in zip(held_shapes, predicted, strict=True)])
        ),
        "heldout_colour_accuracy": float(
            np.mean([COLOUR_NAMES[c] == p[1] for c, p in zip(held_colours, predicted, strict=True)])
        ),
        "recipe": {"num_images": num_images, "steps": steps, "batch_size": batch_size, "seed": seed},
    }
    return model, metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(DEFAULT_DIR), help="directory for model.safetensors + config.json")
    parser.add_argument("--num-images", type=int, default=6000)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model, metrics = train_checker(args.num_images, args.steps, seed=args.seed)
    save_checker(model, args.out, metrics)
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
