"""`fxbench bench`: training and inference throughput, seed-style loop vs fxbench vs ceiling."""

from __future__ import annotations

from pathlib import Path

import typer

from fxbench.cli.common import console, handle_errors


def _parse_models(text: str) -> list[tuple[str, int]]:
    from fxbench.errors import UsageError

    out = []
    for item in text.split(","):
        name, _, size = item.strip().partition(":")
        if not name or not size.isdigit():
            raise UsageError(f"--models item '{item}' is not NAME:SIZE", "e.g. --models unet_dual:256,deeplabv3_resnet50:384")
        out.append((name, int(size)))
    return out


@handle_errors
def bench(
    models: str = typer.Option("unet_dual:256,deeplabv3_resnet50:384", "--models", help="NAME:SIZE list."),
    n_images: int = typer.Option(200, "--n-images", help="Synthetic JPEGs to generate (9% large, 20% fractured)."),
    batch: int = typer.Option(32, "--batch", help="Batch size for fxbench and the ceiling (the seed loop uses 4)."),
    steps: int = typer.Option(20, "--steps", help="Timed training steps for (b) and (c)."),
    seed_steps: int = typer.Option(10, "--seed-steps", help="Timed steps of the seed-style loop."),
    warmup: int = typer.Option(3, "--warmup", help="Untimed warm-up steps."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    amp: str = typer.Option("auto", "--amp", help="auto, bf16, fp16 or none."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the model in (b) and (c)."),
    image_scale: float = typer.Option(1.0, "--image-scale", help="Scale the synthetic image sizes (1.0 = FracAtlas sizes)."),
    out: Path = typer.Option(Path("bench.json"), "--out", help="Where to write the JSON result."),
    work_dir: Path | None = typer.Option(None, "--work-dir", help="Keep the synthetic data and runs here; a later bench with the same --n-images/--image-scale reuses the data."),
    compile_backend: str = typer.Option("inductor", "--compile-backend", help="torch.compile backend with --compile: inductor, aot_eager or eager."),
) -> None:
    """Measure training/inference img/s: (a) seed-style loop, (b) fxbench, (c) bare-model ceiling."""
    from rich.table import Table

    from fxbench.io import write_json_atomic
    from fxbench.train.bench import run_bench

    result = run_bench(_parse_models(models), n_images=n_images, batch=batch, steps=steps, seed_steps=seed_steps,
                       warmup=warmup, device=device, amp=amp, compile_=compile_, image_scale=image_scale,
                       work_dir=work_dir, compile_backend=compile_backend,
                       log=lambda m: console.print(m, markup=False), on_row=lambda r: write_json_atomic(out, r))
    write_json_atomic(out, result)
    m = result["machine"]
    table = Table(title=f"train / infer img/s on {m['gpu'] or m['device']} ({m['threads']} threads, amp {m['amp']})")
    for col in ("model", "px", "batch", "(a) seed loop", "(b) fxbench", "(c) ceiling", "b/a", "b/c", "b/anchor",
                "c/anchor", "infer", "infer hv"):
        table.add_column(col, justify="right", no_wrap=True)

    def ratio(r: dict, key: str) -> str:
        return f"{r[key]:.2f}" if key in r else "-"

    for r in result["rows"]:
        table.add_row(r["model"], str(r["image_size"]), str(r["batch"]), f"{r['seed_loop']:.1f}", f"{r['fxbench']:.1f}",
                      f"{r['ceiling']:.1f}", f"{r['b_over_a']:.2f}", f"{r['b_over_c']:.2f}", ratio(r, "b_over_anchor"),
                      ratio(r, "c_over_anchor"), f"{r['infer']:.1f}", f"{r['infer_hv']:.1f}")
    from fxbench.cli.common import out as stdout

    stdout.print(table)
    console.print(f"wrote {out}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
