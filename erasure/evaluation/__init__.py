"""Views of evaluation results: the HTML report of an ICR, demo or I2P output folder."""
