"""Training loop, learning-rate schedule, losses, layer selection and freezing, strategies, checkpoints."""
from .config import PRESETS, TrainConfig, load_config, lr_at, preset_config, save_config
from .fit import fit, load_checkpoint, load_pretrained, save_checkpoint
from .layers import freeze, layers_table, set_train_mode, trainable_names
from .strategies import STRATEGIES, Strategy, make_strategy

__all__ = ["PRESETS", "TrainConfig", "load_config", "lr_at", "preset_config", "save_config", "fit",
           "load_checkpoint", "load_pretrained", "save_checkpoint", "freeze", "layers_table", "set_train_mode",
           "trainable_names", "STRATEGIES", "Strategy", "make_strategy"]
