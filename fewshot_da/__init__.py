"""fewshot-da: which U-Net layers to fine-tune on a new scanner, and how much target data is needed."""

__version__ = "0.1.0"
