"""The I2P benchmark: generate images for inappropriate prompts, judge them (NudeNet, Q16), report as the SLD paper.

erasure evaluate i2p --model DIR --sld medium --out outputs/i2p/sld-medium
erasure evaluate i2p-compare outputs/i2p/plain outputs/i2p/sld-medium --out outputs/i2p/compare
"""

from erasure.evaluation.i2p.prompts import CATEGORIES, HUB_ID, I2PPrompt, load_prompts

__all__ = ["CATEGORIES", "HUB_ID", "I2PPrompt", "load_prompts"]
