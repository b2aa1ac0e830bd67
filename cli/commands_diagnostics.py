"""CLI verbs (diagnostics): the label-free shift map of a source model on target data."""
import click

from fewshot_da_cli import options
from fewshot_da_cli.errors import one_line_errors


@click.command("shift-map")
@click.option("--model", required=True, type=click.Path(file_okay=False),
              help="Source run folder (the --out of fewshot-da train).")
@click.option("--data", "manifest", required=True, type=click.Path(dir_okay=False),
              help="Target manifest CSV; only its images are read (masks may be absent).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder: shift_map.csv, shift_map.png, summary.json, run.yaml (the same call again "
                   "reuses a finished map; other settings need a new folder).")
@click.option("--domain", "domains", multiple=True,
              help="Target domain(s) of the manifest (default: all); repeat for several.")
@click.option("--method", type=click.Choice(["auto", "bn", "features"]), default="auto", show_default=True,
              help="bn: BatchNorm running stats vs target input stats; features: conv inputs on source vs "
                   "target slices; auto: bn when the net has BatchNorm.")
@click.option("--divergence", type=click.Choice(["w2", "skl"]), default="w2", show_default=True,
              help="Per-channel Gaussian distance: Wasserstein-2 in source sds, or symmetric KL (nats).")
@click.option("--forward", type=click.Choice(["source", "adabn"]), default="source", show_default=True,
              help="source: the model as deployed (shift accumulates with depth); adabn: every BN uses "
                   "the batch's own statistics, so a layer shows the shift left after earlier BNs adapt.")
@click.option("--units", "units_file", type=click.Path(dir_okay=False), default=None,
              help="YAML/JSON {unit: [module prefixes]} (default: the model's top-level modules).")
@click.option("--max-scans", type=int, default=10, show_default=True,
              help="Scans per domain (seeded sample; 0: all).")
@click.option("--max-slices", type=int, default=64, show_default=True,
              help="Slices per domain (seeded sample; 0: all).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the scan and slice samples.")
@click.option("--batch-size", type=int, default=None,
              help="Slices per forward pass (default: 32 on a GPU, 2 on a CPU; 16 with --forward adabn).")
@click.option("--cache", type=click.Path(file_okay=False), default=None,
              help="Cache of preprocessed target images (default: OUT/cache).")
@options.num_threads
@options.quiet
@options.wait
@one_line_errors
def shift_map(model, manifest, out, domains, method, divergence, forward, units_file, max_scans, max_slices,
              seed, batch_size, cache, num_threads, quiet, wait):
    """Label-free map of where a target domain shifts the source model's activation statistics, per unit."""
    from fewshot_da.diagnostics.shift_map import read_units
    from fewshot_da.diagnostics.shift_map import shift_map as run_shift_map
    from fewshot_da.threads import use_threads

    options.note_busy_cores(num_threads)
    use_threads(num_threads)
    units = read_units(units_file) if units_file else None
    summary = run_shift_map(model=model, manifest=manifest, out=out, domains=domains or None, method=method,
                            divergence=divergence, forward=forward, units=units, max_scans=max_scans or None,
                            max_slices=max_slices or None, seed=seed, batch_size=batch_size, cache=cache,
                            progress=options.show_progress(quiet), wait=wait, units_file=units_file)
    for domain, scores in summary["scores"].items():
        ranks = summary["ranks"][domain]
        ranked = sorted((u for u in ranks if ranks[u]), key=ranks.get)
        top = ", ".join(f"{u} {scores[u]:.3f}" for u in ranked[:3])
        click.echo(f"{domain}: {summary['domains'][domain]['n_slices']} slices; most shifted: {top}")
    outputs = summary["outputs"]
    click.echo(f"wrote {outputs['csv']}, {outputs['figure']} ({summary['elapsed_s']:.1f} s)")


COMMANDS = [shift_map]
