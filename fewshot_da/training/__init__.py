"""Training loop, learning-rate schedule, layer groups and freezing, checkpoints."""
from .config import PRESETS, TrainConfig, load_config, lr_at, preset_config, save_config
from .fit import fit, load_checkpoint, load_pretrained, save_checkpoint
from .groups import freeze, layer_groups, layers_table, set_train_mode, trainable_names

__all__ = ["PRESETS", "TrainConfig", "load_config", "lr_at", "preset_config", "save_config", "fit",
           "load_checkpoint", "load_pretrained", "save_checkpoint", "freeze", "layer_groups", "layers_table",
           "set_train_mode", "trainable_names"]
