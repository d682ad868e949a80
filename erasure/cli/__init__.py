"""erasure: generate with erasure methods, evaluate them, export training runs.

examples:
  erasure generate "a photo of a cat" --model DIR --sld medium
  erasure evaluate icr --help
  erasure export outputs/RUN
"""

from __future__ import annotations

from erasure.cli.kit import Commands, run_cli

# Each command is a module with add_arguments(parser) and run(args); add a line here to register one.
COMMANDS: Commands = {
    "generate": ("erasure.cli.generate", "generate images with SLD presets, a run's LoRA and negative prompt"),
    "evaluate": (
        "measure erasure: ICR on the toy world, I2P inappropriateness",
        {
            "icr": (
                "erasure.cli.evaluate_icr",
                "implicit concept ratio of methods (cells), resumable, with Wilson 95%% intervals",
            ),
            "i2p": ("erasure.cli.evaluate_i2p", "generate, judge (NudeNet, Q16) and report I2P inappropriateness"),
            "i2p-compare": ("erasure.cli.evaluate_i2p_compare", "join I2P runs into one categories x methods table"),
        },
    ),
    "export": ("erasure.cli.export", "a run's files again, or for WebUI/ComfyUI (--format kohya, webui, single-file)"),
    "train": ("erasure.cli.train", "train a Geom-Erasing, naive or tokens-only run from a recipe (accelerate-ready)"),
    "report": ("erasure.cli.report", "an HTML page of an evaluation's images side by side, detector boxes drawn"),
}


def main(argv: list[str] | None = None) -> int:
    return run_cli("erasure", __doc__, COMMANDS, argv)
