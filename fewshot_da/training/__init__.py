"""Training loop, learning-rate schedule, losses, layer selection and freezing, strategies."""
from .config import PRESETS, TrainConfig, load_config, lr_at, preset_config, save_config
from .fit import fit
from .layers import freeze, layers_table, set_train_mode, trainable_names
from .strategies import STRATEGIES, Strategy, make_strategy

__all__ = ["PRESETS", "TrainConfig", "load_config", "lr_at", "preset_config", "save_config", "fit", "freeze",
           "layers_table", "set_train_mode", "trainable_names", "STRATEGIES", "Strategy", "make_strategy"]
