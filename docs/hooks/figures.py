"""MkDocs hook: the benchmark figures, served from where the benchmarks write them
(``benchmarks/results/*.png`` of the repository) at ``benchmarks/results/`` of the
site, so that pages show them without a copy in ``docs/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def on_files(files: Files, config: Any) -> Files:
    """MkDocs event: add every figure of benchmarks/results."""
    for figure in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"benchmarks/results/{figure.name}",
                                    abs_src_path=str(figure)))
    return files
