"""The shift map's default units come from the anatomy: built-in nets keep their top-level modules, any other
network gets its traced decision units (each conv with its norm)."""
from anatomy_nets import encoder_decoder
from fewshot_da.diagnostics.shift_map import module_units
from fewshot_da.models import build_model
from fewshot_da.models.anatomy import describe


def test_builtin_units_are_the_top_level_modules():
    assert [name for name, _ in module_units(build_model("dart20"))][:3] == ["init_path", "shortcut0", "down1"]


def test_traced_units_are_the_anatomy_units():
    net = encoder_decoder()
    units = module_units(net)
    assert units == [(u.name, list(u.modules)) for u in describe(net).units]
    assert units[0][1] == ["decoder.encoder.stages.0.0.conv", "decoder.encoder.stages.0.0.norm"]
