"""`spottune`: SpotTUnet (Zakazov et al., DART 2021): a policy network decides per slice and per unit whether to use
the fine-tuned or the frozen source copy of each unit (REFERENCE.md section 6; `fewshot_da.models.spottune` for the
built-in U-Nets, `fewshot_da.models.spottune_traced` for any other network, from its traced anatomy).

Loss: the segmentation loss + lam * the fraction of decisions that use the fine-tuned copy (the code's
normalisation). Optimizer groups: the fine-tuned copy at the schedule's lr, the policy network at 10x it with weight
decay 1e-3 (the reference's 1e-3 / 1e-2 pair, both x0.1 at the preset's drop). Records: per training epoch
(policy_train.csv) and per test scan (policy_test.csv), the fraction of slices that used each unit's fine-tuned copy.
Without `lam`, the paper's chosen value for the budget is used (dsa-code preset).
"""
from ...data.budgets import paper_lambda
from ...models.anatomy import is_declared
from ...models.spottune import SpotTUnet, policy_penalty
from ...models.spottune_traced import TracedSpotTUnet
from .base import Strategy, check_options

def build(model, arch, options, *, budget=None):
    options = check_options("spottune", options, ("lam", "temperature", "unit_map"))
    options.setdefault("lam", paper_lambda(*(budget or (1, 1))))
    options.setdefault("temperature", 0.1)
    options.setdefault("unit_map", "reference")
    lam = float(options["lam"])
    if is_declared(model):  # the built-in U-Nets: the declared units and wiring of models/spottune.py
        wrapper = SpotTUnet(arch, model.state_dict(), unit_map=options["unit_map"],
                            temperature=float(options["temperature"]), base_filters=getattr(model, "base_filters", 0))
    else:  # any other network: units from its traced anatomy, mixed at each unit's output
        wrapper = TracedSpotTUnet(model, temperature=float(options["temperature"]))
    names = wrapper.trainable_names()

    def groups(chosen):
        main = [n for n in chosen if n.startswith("finetuned.")]
        policy = [n for n in chosen if n.startswith("policy.")]
        return [{"names": main}, {"names": policy, "lr_scale": 10.0, "weight_decay": 1e-3}]

    def epoch_end(net, epoch):
        rows = [{"epoch": epoch, **row} for row in net.policy_rows()]
        net.reset_policy_record()
        return rows

    def scan_record(net, scan_id):
        rows = [{"scan": scan_id, **row} for row in net.policy_rows()] if scan_id is not None else []
        net.reset_policy_record()
        return rows

    return Strategy("spottune", options, lambda epoch: names, param_groups=groups,
                    extra_loss=lambda net: policy_penalty(net.last_policy, lam), wrap=lambda net: wrapper,
                    epoch_end=epoch_end, record_file="policy_train.csv", scan_record=scan_record)
