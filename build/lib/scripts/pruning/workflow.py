"""Driver of ``python -m monai.bundle run pruning`` (``configs/prune.json`` on top of ``configs/train.json``).

Load trained weights -> evaluate -> prune (``unstructured.apply_pruning``) -> evaluate -> optional fine-tuning with
the masks held fixed (train.json's own ``SupervisedTrainer``) -> evaluate -> make the pruning permanent -> save the
dense pruned checkpoint and the compressed sparse file -> ``pruning_report.json`` and a table in the log.

Dice is measured by train.json's validation evaluator on the validation fold (the fold used for model selection
during training, so it is not a held-out test set), in the resampled grid of training-time validation.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
import torch.nn as nn
from ignite.engine import Events

from ..common.atomic import atomic_write_text
from ..common.weights import load_weights
from ..common.errors import InputError
from .storage import save_checkpoint, save_sparse_state_dict
from .structured import kept_channels, prune_channels, root_ratios
from .unstructured import METHODS, SCOPES, apply_pruning, make_permanent, sparsity_report

__all__ = ["check_pruning_flags", "evaluate_dice", "run_pruning", "run_structured_pruning", "format_report_table"]

logger = logging.getLogger("pruning")


def _check_flags(finetune_epochs, **fractions) -> None:
    """One-line errors for bad command-line values (instead of a traceback from inside the pruning code)."""
    if isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, int) or finetune_epochs < 0:
        raise InputError(f"--finetune_epochs: expected an integer >= 0, got {finetune_epochs!r}")
    for name, value in fractions.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise InputError(f"--{name}: expected a fraction in [0, 1), e.g. 0.5, got {value!r}")


def _check_channel_flags(stage_ratios, round_to) -> None:
    if not isinstance(stage_ratios, dict) or not all(isinstance(k, str) for k in stage_ratios):
        raise InputError(f"--channel_stage_ratios: expected a dict {{module-name prefix: ratio}}, e.g. "
                         f"\"{{'encoder.stages.0': 0.5}}\", got {stage_ratios!r}")
    for prefix, value in stage_ratios.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise InputError(f"--channel_stage_ratios: the ratio of {prefix!r} must be a fraction in [0, 1), "
                             f"got {value!r}")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise InputError(f"--channel_round_to: expected an integer >= 1 (1: no rounding), got {round_to!r}")


def _check_steps(steps, finetune_epochs) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1 or (steps > 1 and steps > finetune_epochs):
        raise InputError(f"--channel_prune_steps: expected an integer from 1 to --finetune_epochs "
                         f"({finetune_epochs!r}), got {steps!r}")


def check_pruning_flags(method: str = "magnitude", sparsity: float = 0.5, scope: str = "kernels",
                        std_ratio: float = 0.67, finetune_epochs: int = 0, channel_ratio: float = 0.5,
                        channel_stage_ratios: dict | None = None, channel_round_to: int = 1,
                        channel_prune_steps: int = 1) -> bool:
    """Check the pruning ids of ``configs/prune.json`` (run by its ``initialize``, before any data is loaded)."""
    _check_flags(finetune_epochs, sparsity=sparsity, channel_ratio=channel_ratio)
    _check_channel_flags({} if channel_stage_ratios is None else channel_stage_ratios, channel_round_to)
    _check_steps(channel_prune_steps, finetune_epochs)
    if method not in METHODS:
        raise InputError(f"--prune_method: expected one of {', '.join(METHODS)}, got {method!r}")
    if scope not in SCOPES:
        raise InputError(f"--prune_scope: expected one of {', '.join(SCOPES)}, got {scope!r}")
    if isinstance(std_ratio, bool) or not isinstance(std_ratio, (int, float)) or std_ratio < 0:
        raise InputError(f"--std_ratio: expected a number >= 0, got {std_ratio!r}")
    return True


def evaluate_dice(evaluator) -> dict[str, float]:
    """Run a MONAI ``SupervisedEvaluator`` once and return its metrics (e.g. ``val_kidney_dice``) as floats."""
    evaluator.run()
    return {k: float(v) for k, v in sorted(evaluator.state.metrics.items()) if isinstance(v, (int, float))}


def format_report_table(report: dict) -> str:
    """The report's headline numbers as a small text table (stages x metrics)."""
    stages = [s for s in ("before_pruning", "after_pruning", "after_pruning_step_1", "after_finetuning")
              if s in report["dice"]]
    names = sorted({k for s in stages for k in report["dice"][s]})
    lines = [f"{'stage':<18}" + "".join(f"{n:>18}" for n in names)]
    for stage in stages:
        lines.append(f"{stage:<18}" + "".join(f"{report['dice'][stage].get(n, float('nan')):>18.4f}" for n in names))
    after = report["params_after"]
    if "channel_ratio" in report:
        lines.append(f"params: {report['params_before']['total_params']:,} -> {after['total_params']:,} "
                     f"(channel ratio {report['channel_ratio']}, stage ratios {report.get('stage_ratios') or '-'}, "
                     f"kept channels a multiple of {report.get('round_to', 1)}, {report.get('steps', 1)} step(s))")
        return "\n".join(lines)
    lines.append(f"params: total {after['total_params']:,}, nonzero {after['nonzero_params']:,}, "
                 f"sparsity {after['sparsity']:.4f}, of the pruned scope {report['scope_sparsity']:.4f} (method {report['method']}, scope {report['scope']}, "
                 f"{'global' if report['global_pruning'] else 'per-tensor'})")
    sizes = report["file_sizes_bytes"]
    lines.append(f"files: dense {sizes['dense']:,} B, sparse {sizes['sparse']:,} B "
                 f"({sizes['sparse'] / max(sizes['dense'], 1):.2%} of dense)")
    return "\n".join(lines)


def run_pruning(
    network: nn.Module,
    model_path: str,
    evaluator,
    trainer,
    output_dir: str,
    pruned_model_path: str,
    sparse_model_path: str,
    method: str = "magnitude",
    sparsity: float = 0.5,
    scope: str = "kernels",
    global_pruning: bool = True,
    std_ratio: float = 0.67,
    finetune_epochs: int = 0,
    device: torch.device | str = "cpu",
) -> dict:
    """Prune ``network`` loaded from ``model_path`` and save it; return the report (also written to
    ``<output_dir>/pruning_report.json``). ``trainer`` must train ``network`` itself (same object)."""
    if Path(pruned_model_path).resolve() == Path(model_path).resolve():
        raise InputError(f"{pruned_model_path}: the pruned model would overwrite its input; choose another name")
    check_pruning_flags(method, sparsity, scope, std_ratio, finetune_epochs)
    load_weights(network, model_path, device)
    report: dict = {"model_path": str(model_path), "method": method, "sparsity_target": sparsity, "scope": scope,
                    "global_pruning": global_pruning, "std_ratio": std_ratio, "finetune_epochs": finetune_epochs,
                    "dice_note": "validation fold of train.json's datalist, resampled grid (as training validation)",
                    "params_before": sparsity_report(network), "dice": {}}
    report["dice"]["before_pruning"] = evaluate_dice(evaluator)
    targets = apply_pruning(network, method, sparsity, scope, global_pruning, std_ratio)
    report["dice"]["after_pruning"] = evaluate_dice(evaluator)
    if finetune_epochs > 0:
        trainer.run()
        report["dice"]["after_finetuning"] = evaluate_dice(evaluator)
    make_permanent(network)
    report["params_after"] = sparsity_report(network)
    selected = [getattr(module, name).detach() for module, name in targets]
    report["scope_sparsity"] = round(sum(int((t == 0).sum()) for t in selected) / sum(t.numel() for t in selected), 6)
    state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    save_checkpoint(state, pruned_model_path)
    save_sparse_state_dict(state, sparse_model_path)
    report["outputs"] = {"pruned_model": str(pruned_model_path), "sparse_model": str(sparse_model_path)}
    report["file_sizes_bytes"] = {"dense": os.path.getsize(pruned_model_path),
                                  "sparse": os.path.getsize(sparse_model_path)}
    report["nonzero_params"] = report["params_after"]["nonzero_params"]
    report["total_params"] = report["params_after"]["total_params"]
    report["sparsity"] = report["params_after"]["sparsity"]
    atomic_write_text(Path(output_dir) / "pruning_report.json", json.dumps(report, indent=2) + "\n")
    logger.info("pruning report (%s):\n%s", Path(output_dir) / "pruning_report.json", format_report_table(report))
    return report


def run_structured_pruning(
    network: nn.Module,
    model_path: str,
    evaluator,
    trainer,
    optimizer: torch.optim.Optimizer,
    output_dir: str,
    structured_model_path: str,
    example_shape: list[int],
    channel_ratio: float = 0.5,
    finetune_epochs: int = 0,
    device: torch.device | str = "cpu",
    stage_ratios: dict[str, float] | None = None,
    round_to: int = 1,
    steps: int = 1,
) -> dict:
    """Channel-prune ``network`` loaded from ``model_path`` (``structured.prune_channels`` with ``channel_ratio``,
    ``stage_ratios`` and ``round_to``), evaluate, fine-tune, save the smaller dense state dict to
    ``structured_model_path``; report in ``<output_dir>/structured_pruning_report.json``. ``trainer`` must train
    ``network`` with ``optimizer``.

    With ``steps`` > 1 the pruning is iterative: step ``s`` prunes every root to the width of ratio
    ``ratio * s / steps``; step 1 runs before fine-tuning, the others at evenly spaced fine-tuning epochs, so the
    network recovers between steps (``finetune_epochs`` must be >= ``steps``)."""
    if Path(structured_model_path).resolve() == Path(model_path).resolve():
        raise InputError(f"{structured_model_path}: the pruned model would overwrite its input; choose another name")
    stage_ratios = dict(stage_ratios or {})
    _check_flags(finetune_epochs, channel_ratio=channel_ratio)
    _check_channel_flags(stage_ratios, round_to)
    _check_steps(steps, finetune_epochs)
    load_weights(network, model_path, device)
    example = torch.zeros(example_shape, device=device)
    try:  # a prefix typo stops here, before the first evaluation
        ratios = root_ratios(network, example, channel_ratio, stage_ratios)
    except ValueError as err:
        raise InputError(f"--channel_stage_ratios: {err} (or pass --channel_stage_ratios \"{{}}\" to prune every "
                         "stage by --channel_ratio)") from None
    original = {name: module.out_channels for name, module in network.named_modules() if name in ratios}
    report: dict = {"model_path": str(model_path), "channel_ratio": channel_ratio, "stage_ratios": stage_ratios,
                    "round_to": round_to, "steps": steps, "finetune_epochs": finetune_epochs,
                    "dice_note": "validation fold of train.json's datalist, resampled grid (as training validation)",
                    "params_before": sparsity_report(network), "dice": {}}
    report["dice"]["before_pruning"] = evaluate_dice(evaluator)

    def prune_step(step: int) -> None:
        widths = {n: kept_channels(original[n], ratios[n] * step / steps, round_to) for n in original}
        try:
            prune_channels(network, example, widths=widths)
        except ValueError as err:
            raise InputError(f"channel pruning: {err}") from None
        # torch-pruning replaces the pruned tensors with new Parameters: point the optimizer at them, fresh state
        optimizer.state.clear()
        optimizer.param_groups[0]["params"] = [p for p in network.parameters() if p.requires_grad]
        del optimizer.param_groups[1:]
        logger.info("channel pruning step %d/%d: %d parameters", step, steps, sum(p.numel() for p in network.parameters()))

    prune_step(1)
    report["dice"]["after_pruning" if steps == 1 else "after_pruning_step_1"] = evaluate_dice(evaluator)
    if steps > 1:  # steps 2..k after evenly spaced fine-tuning epochs
        at_epoch = {round(finetune_epochs * (s - 1) / steps): s for s in range(2, steps + 1)}
        trainer.add_event_handler(Events.EPOCH_COMPLETED(event_filter=lambda _e, epoch: epoch in at_epoch),
                                  lambda engine: prune_step(at_epoch[engine.state.epoch]))
    if finetune_epochs > 0:
        trainer.run()
        report["dice"]["after_finetuning"] = evaluate_dice(evaluator)
    report["params_after"] = sparsity_report(network)
    state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    save_checkpoint(state, structured_model_path)
    report["outputs"] = {"structured_model": str(structured_model_path)}
    report["total_params"] = report["params_after"]["total_params"]
    report["layer_shapes"] = {k: list(v.shape) for k, v in state.items() if k.endswith(".weight")}
    atomic_write_text(Path(output_dir) / "structured_pruning_report.json", json.dumps(report, indent=2) + "\n")
    logger.info("structured pruning report (%s):\n%s", Path(output_dir) / "structured_pruning_report.json",
                format_report_table(report))
    return report
